"""Table 6 'MPF': one ResSeg per phase, output maps added."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "mpf_resseg"
    config.model.fusion = None
    return config
