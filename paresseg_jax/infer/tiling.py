"""Overlap-tile geometry: where tiles go and how much each tile pixel counts.

The paper segments a test slice by overlapping 224 x 224 tiles stitched back
into the full slice (Sec. 3). Overlapping predictions are averaged with a
weight that falls towards the tile border, where a convolutional network sees
zero padding instead of the real neighbours.
"""

from __future__ import annotations

import math

import numpy as np

WEIGHTINGS = ("pyramid", "gaussian", "constant")


def tile_starts(extent: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles covering ``[0, extent)`` along one axis.

    The first tile starts at 0 and the last ends at ``extent``; in between the
    tiles are spread evenly with steps of at most ``stride`` (as nnU-Net does).
    An axis shorter than the tile gets one tile at 0 that reaches past the end
    (the part outside the image is read as zeros).
    """
    if tile < 1 or not 0 < stride <= tile:
        raise ValueError(f"tile={tile}, stride={stride}: need tile >= 1 and 0 < stride <= tile (config.eval.tile/stride)")
    if extent <= tile:
        return np.zeros(1, np.int64)
    count = math.ceil((extent - tile) / stride) + 1
    return np.round(np.linspace(0, extent - tile, count)).astype(np.int64)


def tile_weights(tile: int, weighting: str = "pyramid") -> np.ndarray:
    """``[tile, tile]`` float32 weights, maximum 1 and positive everywhere.

    - ``pyramid``: linear ramp from the centre down to the border, the
      distance (in pixels, + 1) to the nearest tile edge, divided by its maximum;
    - ``gaussian``: nnU-Net's, a centred Gaussian with sigma = tile / 8,
      floored at its smallest non-zero value so border pixels still count;
    - ``constant``: plain averaging.
    """
    index = np.arange(tile)
    if weighting == "pyramid":
        ramp = np.minimum(index + 1, tile - index).astype(np.float64)
        weights = np.minimum.outer(ramp, ramp)
    elif weighting == "gaussian":
        sigma = tile / 8
        bell = np.exp(-0.5 * ((index - (tile - 1) / 2) / sigma) ** 2)
        weights = np.outer(bell, bell)
        weights = np.maximum(weights, weights[weights > 0].min())
    elif weighting == "constant":
        weights = np.ones((tile, tile))
    else:
        raise ValueError(f"unknown tile weighting {weighting!r} (config.eval.weighting); choose one of {WEIGHTINGS}")
    return (weights / weights.max()).astype(np.float32)
