"""PyTorch oracle of the reference PA-ResSeg models, for cross-checking the Flax port.

Needs the ``torch`` extra (``pip install 'paresseg_jax[torch]'``); nothing else in the library imports it
at import time. ``state_dict_keys.json`` (package data) holds the reference's own state_dict keys.
"""

from .networks import RESNET_2D, RESNET_phase_att

__all__ = ["RESNET_2D", "RESNET_phase_att"]
