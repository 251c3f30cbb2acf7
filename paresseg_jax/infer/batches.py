"""A volume's slices or tiles fed to a compiled forward pass in batches of one fixed shape (the last one padded).

:func:`full_slices` and :func:`overlap_tiles` compile their forward when called
(``compile_forward(batch shape)``) and return ``run(volumes, slices, prob,
report)``, which fills ``prob`` later: ``paresseg_jax.infer.predict`` plans a
volume (compiles) before its images are ready. While the device runs one batch
the host prepares the next (:func:`pipelined`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from paresseg_jax.data.windows import read_window, slice_indices
from paresseg_jax.infer.tiling import tile_starts, tile_weights


def full_slices(compile_forward, channels: int, batch_size: int, padded: tuple[int, int]) -> Callable:
    """``run(volumes, slices, prob, report)`` over whole slices, zero-padded to ``padded`` (height, width), its
    forward compiled now; ``prob`` takes the forward's output (for the exact crop, a window of its own)."""
    forward = compile_forward((batch_size, *padded, channels))

    def run(volumes, slices, prob, report):
        depth, height, width = next(iter(volumes.values())).shape

        def batches():
            for start in range(0, len(slices), batch_size):
                chunk = slices[start : start + batch_size]
                inputs = tuple(np.zeros((batch_size, *padded, channels), np.float32) for _ in volumes)
                for i, z in enumerate(chunk):
                    stack = slice_indices(int(z), depth, channels)
                    for x, volume in zip(inputs, volumes.values()):
                        x[i, :height, :width] = np.moveaxis(volume[stack], 0, -1)
                yield chunk, inputs

        done = 0
        for chunk, out in pipelined(forward, batches()):
            prob[chunk] = out[: len(chunk), : prob.shape[1], : prob.shape[2]]
            done += len(chunk)
            report(done)

    return run


def overlap_tiles(compile_forward, channels: int, batch_size: int, tile: int, stride: int, weighting: str) -> Callable:
    """``run(volumes, slices, prob, report)`` over ``tile`` x ``tile`` windows every ``stride`` px, weighted by
    ``weighting``, its forward compiled now."""
    weights = tile_weights(tile, weighting)
    forward = compile_forward((batch_size, tile, tile, channels))

    def run(volumes, slices, prob, report):
        depth, height, width = prob.shape
        starts = [(y0, x0) for y0 in tile_starts(height, tile, stride) for x0 in tile_starts(width, tile, stride)]
        norm = np.zeros((height, width), np.float32)
        for y0, x0 in starts:
            norm[y0 : y0 + tile, x0 : x0 + tile] += weights[: height - y0, : width - x0]
        positions = [(int(z), int(y0), int(x0)) for z in slices for y0, x0 in starts]

        def batches():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                inputs = tuple(np.zeros((batch_size, tile, tile, channels), np.float32) for _ in volumes)
                for i, (z, y0, x0) in enumerate(chunk):
                    stack = slice_indices(z, depth, channels)
                    for x, volume in zip(inputs, volumes.values()):
                        x[i] = np.moveaxis(read_window(volume, stack, y0, x0, tile), 0, -1)
                yield chunk, inputs

        done = 0
        for chunk, out in pipelined(forward, batches()):
            for (z, y0, x0), p in zip(chunk, out):
                weighted = (p * weights)[: height - y0, : width - x0]
                prob[z, y0 : y0 + tile, x0 : x0 + tile] += weighted
            done += len(chunk)
            report(done // len(starts))
        prob[slices] /= norm

    return run


def pipelined(forward, batches: Iterable) -> Iterator[tuple]:
    """``(meta, host result)`` per batch, dispatching batch k+1 before fetching batch k."""
    pending = None
    for meta, inputs in batches:
        result = forward(inputs)
        if pending is not None:
            yield pending[0], np.asarray(pending[1])
        pending = (meta, result)
    if pending is not None:
        yield pending[0], np.asarray(pending[1])
