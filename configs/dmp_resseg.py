"""Table 6 'DMP': PV and ART slices stacked as the input channels of one ResSeg."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "dmp_resseg"
    config.model.fusion = None
    return config
