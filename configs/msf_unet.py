"""Table 5 'MSF-UNet': a UNet encoder per phase, features concatenated at each level."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "msf_unet"
    config.model.fusion = "concat"
    return config
