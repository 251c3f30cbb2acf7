"""Table 5 'single UNet': a standard UNet on the PV phase."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "unet"
    config.model.fusion = None
    config.model.phases = ("pv",)
    return config
