"""A liver model for the study benchmark: the liver-ResSeg's cost, the phantom liver's extent.

The study benchmark times the cascade's liver stage on a phantom study, with
no trained liver model at hand. An untrained ResSeg calls every pixel liver,
so the stage would compute every slice whatever its settings. This stand-in
runs the untrained liver-ResSeg (its forward pass, FLOPs and compiled program
are the real one's) but answers with a liver found from PV alone: pixels
whose ``LIVER_WINDOW_HU`` fraction over a ``POOL`` x ``POOL`` neighbourhood
is at least ``MIN_FRACTION`` (the phantom's liver, with some of the spleen:
on the 512 x 512 x 60 phantom it holds 31 slices, the liver 25). The fraction
is a count from a summed-area table (exact in int32, a few adds per pixel where
a pooling window would add ``POOL**2``), divided as ``nn.avg_pool`` divides.
"""

from __future__ import annotations

import jax.numpy as jnp

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
        fraction = window_counts(inside, POOL).astype(jnp.float32) / POOL**2
        score = 40.0 * (fraction - MIN_FRACTION) + 0.0 * logits[..., 1:2]
        return jnp.concatenate([0.0 * logits[..., :1], score], axis=-1)


def window_counts(mask: jnp.ndarray, size: int) -> jnp.ndarray:
    """Ones of NHWC 0/1 ``mask`` in the ``size`` x ``size`` window centred on each pixel (zeros beyond the edges)."""
    r = size // 2
    table = jnp.pad(mask.astype(jnp.int32), ((0, 0), (r + 1, r), (r + 1, r), (0, 0))).cumsum(1).cumsum(2)
    h, w = mask.shape[1:3]
    return (table[:, size:size + h, size:size + w] - table[:, :h, size:size + w]
            - table[:, size:size + h, :w] + table[:, :h, :w])
