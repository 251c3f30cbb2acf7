"""Table 5 'PA-UNet': a UNet encoder per phase, the PA block at each level."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "pa_unet"
    config.model.fusion = "pa"
    return config
