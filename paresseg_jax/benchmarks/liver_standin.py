"""A liver model for the study benchmark: the liver-ResSeg's cost, the phantom liver's extent.

The study benchmark times the cascade's liver stage on a phantom study, with
no trained liver model at hand. An untrained ResSeg calls every pixel liver,
so the stage would compute every slice whatever its settings. This stand-in
runs the untrained liver-ResSeg (its forward pass, FLOPs and compiled program
are the real one's) but answers with a liver found from PV alone: pixels
whose ``LIVER_WINDOW_HU`` fraction over a ``POOL`` x ``POOL`` neighbourhood
is at least ``MIN_FRACTION`` (the phantom's liver, with some of the spleen:
on the 512 x 512 x 60 phantom it holds 31 slices, the liver 25).
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from paresseg_jax import config_defaults
from paresseg_jax.models.resseg import ResSeg

LIVER_WINDOW_HU = (80.0, 160.0)  # the phantom liver's PV values, most of them (1st-99th percentile: 72-157 HU)
POOL = 41  # pixels: wider than the phantom's vessels and lesions, narrower than its liver
MIN_FRACTION = 0.9


class PhantomLiver(ResSeg):
    """The liver-ResSeg's forward pass (kept: its output enters the result at weight 0) and the phantom's liver."""

    def __call__(self, *inputs, train: bool = False):
        logits = super().__call__(*inputs, train=train)
        low, high = config_defaults.get_config().data.preprocess.window
        hu = low + inputs[0][..., self.in_channels // 2 : self.in_channels // 2 + 1] * (high - low)
        inside = ((hu >= LIVER_WINDOW_HU[0]) & (hu <= LIVER_WINDOW_HU[1])).astype(jnp.float32)
        fraction = nn.avg_pool(inside, (POOL, POOL), strides=(1, 1), padding="SAME")
        score = 40.0 * (fraction - MIN_FRACTION) + 0.0 * logits[..., 1:2]
        return jnp.concatenate([0.0 * logits[..., :1], score], axis=-1)
