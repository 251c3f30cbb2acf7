"""A tiny PA-ResSeg run for tests and a first try: width 4, small crops, a few steps."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.width = 4
    config.data.crop_size = 64
    config.data.worker_count = 0
    config.train.batch_size = 2
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.eval.tile = 64
    config.eval.stride = 32
    config.eval.batch_size = 2
    return config
