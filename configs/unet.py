"""Table 5 'single UNet': a standard UNet on the PV phase."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "unet"
    config.model.fusion = None
    config.model.phases = ("pv",)
    return config
