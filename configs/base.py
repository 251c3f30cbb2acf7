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
    # Grain training pipeline (paresseg_jax.data.pipeline).
    config.data.crop_size = 224  # square training patch, drawn in the case's liver box
    config.data.tumor_free_fraction = 1.0  # share of liver slices without tumor kept for training
    config.data.intensity_jitter = 0.0  # per-phase random scale/shift amplitude; 0 = off (reference)
    config.data.worker_count = 2  # Grain worker processes (0 = load in the training process)
    config.data.worker_buffer_size = 2  # batches each worker prepares ahead
    config.data.read_threads = 1  # threads reading source records (ours are tiny; raise for a slow source)
    config.train = ml_collections.ConfigDict()
    config.eval = ml_collections.ConfigDict()
    # Inference and evaluation (paresseg_jax.infer, paresseg_jax.evaluate).
    config.eval.threshold = 0.6  # tumor if probability > threshold (the reference's 0.6)
    config.eval.mode = "full"  # "full": one pass per whole slice (reference code); "tile": overlap-tile (paper)
    config.eval.tile = 224  # overlap-tile window (pixels)
    config.eval.stride = 112  # overlap-tile step (pixels, <= tile)
    config.eval.weighting = "pyramid"  # overlap-tile blending: "pyramid" | "gaussian" (nnU-Net) | "constant"
    config.eval.batch_size = 8  # slices or tiles per forward pass (fixed shape: one compile)
    config.eval.tta = False  # average over flips along H, W and both
    config.eval.pad_multiple = 32  # full mode pads slices to a multiple of the network's downsampling
    config.eval.liver_threshold = 0.5  # cascade: liver if liver-model probability > this
    return config
