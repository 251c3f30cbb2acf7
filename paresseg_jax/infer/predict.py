"""Volume inference: slices -> 2.5D stacks -> model -> tumor probability -> volume.

Two ways to cover a slice:

- ``full``: one forward pass per whole slice, as the reference code does; the
  slice is zero-padded at the bottom/right to a multiple of ``pad_multiple``
  (the encoder halves the size five times) and the padding cut off again.
- ``tile``: the paper's overlap-tile inference; ``tile`` x ``tile`` windows
  every ``stride`` pixels (see :mod:`paresseg_jax.infer.tiling`), averaged
  with a pyramid or Gaussian weight. Any image size works: windows reaching
  past the image read zeros there.

With a ROI (the cascade's dilated liver), only slices that hold some of it
are computed, and by default only the ROI's in-plane bounding box (grown by
``roi_margin`` and rounded up to ``ROI_GRID`` pixels, so volumes share a few
compiled shapes): outside the ROI the inputs are zero and the output is
discarded, and training patches were crops of the same zero-gated images.

Slices or tiles go through the model in batches of a fixed shape (the last
batch is padded), so a volume compiles the model once per mode and size.
While the device runs one batch the host prepares the next.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax.data.pipeline import read_window, slice_indices
from paresseg_jax.infer.tiling import tile_starts, tile_weights

MODES = ("full", "tile")
# The ROI crop's height and width are multiples of this (or the whole image side).
ROI_GRID = 64
_FLIPS = ((), (1,), (2,), (1, 2))


@functools.partial(jax.jit, static_argnames=("module", "tta"))
def tumor_probability(module, variables, inputs: tuple, tta: bool = False) -> jax.Array:
    """Softmax probability of class 1 (``[B, H, W]``) for one batch of NHWC inputs, one per phase.

    With ``tta`` the batch is also run flipped along H, W and both, and the
    four unflipped probabilities are averaged (the training augmentation
    flips, so the model has seen every orientation).
    """

    def probability(xs):
        logits = module.apply(variables, *xs, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]

    if not tta:
        return probability(inputs)
    total = 0.0
    for axes in _FLIPS:
        flipped = tuple(jnp.flip(x, axes) for x in inputs) if axes else inputs
        out = probability(flipped)
        total = total + (jnp.flip(out, axes) if axes else out)
    return total / len(_FLIPS)


def predict_volume(
    module,
    variables: Mapping,
    images: Mapping[str, np.ndarray],
    roi: np.ndarray | None = None,
    *,
    mode: str = "full",
    tile: int = 224,
    stride: int = 112,
    weighting: str = "pyramid",
    batch_size: int = 8,
    tta: bool = False,
    pad_multiple: int = 32,
    crop_to_roi: bool = True,
    roi_margin: int = 32,
) -> np.ndarray:
    """Tumor (class 1) probability volume ``(z, y, x)`` float32 of a windowed study.

    ``images`` maps phase name -> ``(z, y, x)`` volume in [0, 1] (PV geometry,
    other phases registered to it); the model's ``phases`` must all be there.
    With a ``roi`` (the dilated liver mask), voxels outside it are set to 0 in
    the inputs (as the paper does), slices without ROI are not computed, and
    the probability outside the ROI is 0; with ``crop_to_roi`` only the ROI's
    bounding box plus ``roi_margin`` pixels (see :func:`roi_box`) is computed.
    """
    phases, shape = _check_inputs(module, images, roi)
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r} (config.eval.mode); choose one of {MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (config.eval.batch_size)")
    volumes = {p: np.asarray(images[p], np.float32) for p in phases}
    if roi is not None:
        inside = np.asarray(roi) > 0
        volumes = {p: np.where(inside, v, np.float32(0)) for p, v in volumes.items()}
        slices = np.flatnonzero(inside.any(axis=(1, 2)))
    else:
        slices = np.arange(shape[0])
    prob = np.zeros(shape, np.float32)
    if len(slices):
        variables = jax.device_put(variables)
        box = (slice(None), slice(None), slice(None))
        if roi is not None and crop_to_roi:
            box = (slice(None), *roi_box(inside, roi_margin))
            volumes = {p: v[box] for p, v in volumes.items()}
        if mode == "full":
            _full_slices(module, variables, volumes, slices, prob[box], batch_size, tta, pad_multiple)
        else:
            _overlap_tiles(module, variables, volumes, slices, prob[box], batch_size, tta, tile, stride, weighting)
    if roi is not None:
        prob[~inside] = 0.0
    return prob


def roi_box(inside: np.ndarray, margin: int) -> tuple[slice, slice]:
    """In-plane ``(rows, cols)`` slices of the ROI's bounding box over all slices, grown by `margin`
    and then to a multiple of `ROI_GRID` (centred, kept inside the image; at most the whole side)."""
    if margin < 0:
        raise ValueError(f"roi_margin={margin} must be >= 0 (config.eval.roi_margin)")
    box = []
    for axis, extent in ((1, inside.shape[1]), (2, inside.shape[2])):
        hits = np.flatnonzero(inside.any(axis=(0, 3 - axis)))
        low, high = max(0, hits[0] - margin), min(extent, hits[-1] + 1 + margin)
        size = min(extent, -(-(high - low) // ROI_GRID) * ROI_GRID)
        low = min(max(0, (low + high - size) // 2), extent - size)
        box.append(slice(int(low), int(low + size)))
    return box[0], box[1]


def _full_slices(module, variables, volumes, slices, prob, batch_size, tta, pad_multiple):
    depth, height, width = prob.shape
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple={pad_multiple} must be >= 1 (config.eval.pad_multiple)")
    padded = tuple(math.ceil(n / pad_multiple) * pad_multiple for n in (height, width))
    channels = module.in_channels
    forward = _compiled_forward(module, variables, tta, (batch_size, *padded, channels))

    def batches():
        for start in range(0, len(slices), batch_size):
            chunk = slices[start : start + batch_size]
            inputs = tuple(np.zeros((batch_size, *padded, channels), np.float32) for _ in volumes)
            for i, z in enumerate(chunk):
                stack = slice_indices(int(z), depth, channels)
                for x, volume in zip(inputs, volumes.values()):
                    x[i, :height, :width] = np.moveaxis(volume[stack], 0, -1)
            yield chunk, inputs

    for chunk, out in _pipelined(forward, batches()):
        prob[chunk] = out[: len(chunk), :height, :width]


def _overlap_tiles(module, variables, volumes, slices, prob, batch_size, tta, tile, stride, weighting):
    depth, height, width = prob.shape
    weights = tile_weights(tile, weighting)
    starts = [(y0, x0) for y0 in tile_starts(height, tile, stride) for x0 in tile_starts(width, tile, stride)]
    norm = np.zeros((height, width), np.float32)
    for y0, x0 in starts:
        norm[y0 : y0 + tile, x0 : x0 + tile] += weights[: height - y0, : width - x0]
    positions = [(int(z), int(y0), int(x0)) for z in slices for y0, x0 in starts]
    channels = module.in_channels
    forward = _compiled_forward(module, variables, tta, (batch_size, tile, tile, channels))

    def batches():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            inputs = tuple(np.zeros((batch_size, tile, tile, channels), np.float32) for _ in volumes)
            for i, (z, y0, x0) in enumerate(chunk):
                stack = slice_indices(z, depth, channels)
                for x, volume in zip(inputs, volumes.values()):
                    x[i] = np.moveaxis(read_window(volume, stack, y0, x0, tile), 0, -1)
            yield chunk, inputs

    for chunk, out in _pipelined(forward, batches()):
        for (z, y0, x0), p in zip(chunk, out):
            weighted = (p * weights)[: height - y0, : width - x0]
            prob[z, y0 : y0 + tile, x0 : x0 + tile] += weighted
    prob[slices] /= norm


def _compiled_forward(module, variables, tta, shape):
    """The jitted batch function, after checking (without running it) that it keeps H and W."""
    abstract = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for _ in module.phases)
    out = jax.eval_shape(functools.partial(tumor_probability, module, tta=tta), variables, abstract)
    if tuple(out.shape) != tuple(shape[:3]):
        raise ValueError(
            f"{type(module).__name__} maps {shape[1]}x{shape[2]} inputs to {out.shape[1:]} outputs; use a tile size "
            "or pad_multiple (config.eval.tile / config.eval.pad_multiple) that the model's down-sampling divides"
        )
    return lambda inputs: tumor_probability(module, variables, inputs, tta=tta)


def _pipelined(forward, batches: Iterable) -> Iterator[tuple]:
    """``(meta, host result)`` per batch, dispatching batch k+1 before fetching batch k."""
    pending = None
    for meta, inputs in batches:
        result = forward(inputs)
        if pending is not None:
            yield pending[0], np.asarray(pending[1])
        pending = (meta, result)
    if pending is not None:
        yield pending[0], np.asarray(pending[1])


def _check_inputs(module, images: Mapping[str, np.ndarray], roi):
    phases = tuple(module.phases)
    missing = [p for p in phases if p not in images]
    if missing:
        raise ValueError(f"the model needs phases {phases} but the images lack {missing}; pass one volume per phase")
    shape = tuple(np.shape(images[phases[0]]))
    if len(shape) != 3:
        raise ValueError(f"images[{phases[0]!r}] has shape {shape}; expected a (z, y, x) volume")
    for p in phases:
        volume = np.asarray(images[p])
        if volume.shape != shape:
            raise ValueError(f"images[{p!r}] has shape {volume.shape}, images[{phases[0]!r}] {shape}: register the phases to PV first")
        low, high = float(volume.min()), float(volume.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"images[{p!r}] has values in [{low:g}, {high:g}]; window the CT to [0, 1] first "
                "(paresseg_jax.data.preprocess)"
            )
    if roi is not None and np.shape(roi) != shape:
        raise ValueError(f"roi has shape {np.shape(roi)}, the images {shape}")
    return phases, shape
