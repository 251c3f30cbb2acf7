"""Stage 1 of the cascade: the single-branch 'liver-ResSeg' on PV whose dilated output is the liver ROI."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "resseg"
    config.model.fusion = None
    config.model.phases = ("pv",)
    config.data.target = "liver"
    return config
