"""Base experiment: PA-ResSeg as the paper trains it. Other configs import and edit this."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "paresseg"
    config.model.width = 64
    config.model.in_channels = 3
    config.model.num_classes = 2
    config.model.attention = "reference"
    config.model.fusion = "pa"
    config.model.dtype = "float32"
    config.model.phases = ("pv", "art")

    config.data = ml_collections.ConfigDict()
    config.train = ml_collections.ConfigDict()
    config.eval = ml_collections.ConfigDict()
    return config
