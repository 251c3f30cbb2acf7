"""Table 6 'MPF': one ResSeg per phase, output maps added."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "mpf_resseg"
    config.model.fusion = None
    return config
