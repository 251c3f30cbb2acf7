"""Table 4 row 4: MSF-ResSeg with intra-PA only (no inter-PA) at each scale."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "msf_resseg"
    config.model.fusion = "intra"
    return config
