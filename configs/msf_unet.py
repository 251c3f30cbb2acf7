"""Table 5 'MSF-UNet': a UNet encoder per phase, features concatenated at each level."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "msf_unet"
    config.model.fusion = "concat"
    return config
