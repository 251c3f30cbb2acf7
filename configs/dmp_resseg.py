"""Table 6 'DMP': PV and ART slices stacked as the input channels of one ResSeg."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "dmp_resseg"
    config.model.fusion = None
    return config
