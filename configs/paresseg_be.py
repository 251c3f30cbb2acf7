"""Table 4 row 6: PA-ResSeg trained with the paper's 3D boundary-enhanced loss."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "paresseg"
    config.model.fusion = "pa"
    config.train.loss = "be"
    return config
