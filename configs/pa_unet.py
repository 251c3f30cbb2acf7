"""Table 5 'PA-UNet': a UNet encoder per phase, the PA block at each level."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "pa_unet"
    config.model.fusion = "pa"
    return config
