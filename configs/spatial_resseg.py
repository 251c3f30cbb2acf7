"""Beyond the paper: MSF-ResSeg with spatial inter-phase attention (local windows) at six scales."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "msf_resseg"
    config.model.fusion = "spatial"
    return config
