"""Table 4 row 5, Tables 6-7: PA-ResSeg trained with cross-entropy (the reference code's loss)."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "paresseg"
    config.model.fusion = "pa"
    return config
