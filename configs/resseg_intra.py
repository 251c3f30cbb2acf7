"""Table 4 row 2: single ResSeg (PV) with intra-PA on each of its six scales."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "resseg"
    config.model.fusion = "intra"
    config.model.phases = ("pv",)
    return config
