"""Beyond the paper: MSF-ResSeg with spatial inter-phase attention (local windows) at six scales."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "msf_resseg"
    config.model.fusion = "spatial"
    return config
