"""Table 7 'MC-FCN' (Sun et al. 2017): an FCN per phase, fused at the high-level layers."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "mc_fcn"
    config.model.fusion = "concat"
    return config
