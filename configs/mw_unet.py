"""Table 7 'MW-UNet' (Wu et al. 2019): UNet with learnable phase weights (0.5/0.5 at start) at each level."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "mw_unet"
    config.model.fusion = "weighted"
    return config
