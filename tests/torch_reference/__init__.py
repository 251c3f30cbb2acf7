"""PyTorch oracle of the reference PA-ResSeg models, for cross-checking the Flax port."""

from .networks import RESNET_2D, RESNET_phase_att

__all__ = ["RESNET_2D", "RESNET_phase_att"]
