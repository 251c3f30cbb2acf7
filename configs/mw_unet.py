"""Table 7 'MW-UNet' (Wu et al. 2019): UNet with learnable phase weights (0.5/0.5 at start) at each level."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "mw_unet"
    config.model.fusion = "weighted"
    return config
