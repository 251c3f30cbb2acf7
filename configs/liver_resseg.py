"""Stage 1 of the cascade: the single-branch 'liver-ResSeg' on PV whose dilated output is the liver ROI."""

from paresseg_jax import config_defaults


def get_config():
    return config_defaults.liver_stage()
