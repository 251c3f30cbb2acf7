"""Table 4 row 5, Tables 6-7: PA-ResSeg trained with cross-entropy (the reference code's loss)."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "paresseg"
    config.model.fusion = "pa"
    return config
