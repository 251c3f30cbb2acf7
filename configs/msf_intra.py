"""Table 4 row 4: MSF-ResSeg with intra-PA only (no inter-PA) at each scale."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "msf_resseg"
    config.model.fusion = "intra"
    return config
