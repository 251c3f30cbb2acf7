"""Table 4 row 6: PA-ResSeg trained with the paper's 3D boundary-enhanced loss."""

from configs import paresseg


def get_config():
    config = paresseg.get_config()
    config.train.loss = "be"
    return config
