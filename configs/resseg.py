"""Table 4 row 1 (and Tables 8-11): single ResSeg on the PV phase."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "resseg"
    config.model.fusion = None
    config.model.phases = ("pv",)
    return config
