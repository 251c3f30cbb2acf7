"""Table 4 row 2: single ResSeg (PV) with intra-PA on each of its six scales."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "resseg"
    config.model.fusion = "intra"
    config.model.phases = ("pv",)
    return config
