"""The exact ROI crop: whole-slice probabilities of ResSeg / MSF-ResSeg (PA-ResSeg) from a crop of the fine scales.

Inputs are 0 outside the ROI, yet the features there are not (conv biases, BN
shifts, zero padding at the slice's sides), every encoder scale's receptive
field grows (5, 22, 56, 124, 260, 532 px), and the phase attention's channel
energies sum over every pixel of a scale. So cropping the slice changes the
function. What is exact (ARCHITECTURE.md, "The exact ROI crop"):

- an encoder feature whose receptive field misses the ROI equals the all-zero
  input's feature at that position (:func:`zero_maps`, once per slice size);
- scales 1 to ``SPLIT`` run on a crop (the ROI box + ``CROP_MARGIN`` px, on the
  pooling grid); at each, the crop's values are kept where its own zero padding
  cannot reach them (``HALO`` px from a crop side that is not the slice's), the
  zero-input map elsewhere (:func:`_assembled`). With the margin twice the
  receptive field's half-width, every feature the ROI reaches is kept;
- deeper scales and the fusion blocks (the attention sums over the whole
  slice) run on the whole slice from those maps, the decoder on the ROI box +
  ``DECODER_MARGIN`` px of the fused features.

Scales 1-3 hold 63% of the encoders' FLOPs at 512 x 512 (PA-ResSeg width 64);
XLA counts 613 GFLOP per whole slice and 440 for a 250 x 220 px liver box.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax import ops, stage_times
from paresseg_jax.infer.predict import FLIPS, ROI_GRID, counted, padded_shape
from paresseg_jax.models.base import MULTIPLE
from paresseg_jax.models.fusion import encoder_name
from paresseg_jax.models.resseg import FeatureDecoder, MSFResSeg, ResEncoder, ResSeg

# Encoder scales computed on the crop (1, /2, /4); the split with the fewest FLOPs at 512 x 512.
SPLIT = 3
# Per scale s (0-based), how far (input px) a feature's receptive field reaches beyond its own 2^s pixels:
# 3x3 convs and 2x2 poolings of `residual_encoder` (receptive fields 5, 22, 56 px).
HALO = (2, 10, 26)
# An input crop side this far (input px) beyond the ROI box keeps every feature the ROI reaches out of the
# band its zero padding corrupts: 2 * HALO + 2^s - 1 at each computed scale.
CROP_MARGIN = max(2 * h + 2**s - 1 for s, h in enumerate(HALO))
# The decoder's zero padding at a crop side reaches this far (input px): its /32 path's five 4x4 stride-2
# deconvolutions corrupt 1, 3, 7, 15, 31 rows, the head's 3x3 conv one more.
DECODER_MARGIN = 32
# Input crops start on ALIGN (the pooling grid of the deepest computed scale), output crops on DECODER_ALIGN
# (the /32 grid); both are multiples of predict.ROI_GRID long (so volumes share compiled shapes).
ALIGN, DECODER_ALIGN = 2 ** (SPLIT - 1), MULTIPLE
# The models whose encoders the exact crop knows: ResSeg (DMP-ResSeg) and MSF-ResSeg (PA-ResSeg).
MODELS = (ResSeg, MSFResSeg)
# The exact crop is used when its input crop covers at most this share of the slice: the all-zero maps cost
# about a quarter of a slice per volume (146 of 613 GFLOP at 512 x 512, width 64), and a 300 x 260 px box
# (a 0.66 share) already saves only 1.29x.
MAX_CROP_SHARE = 0.75


def supported(module) -> bool:
    return type(module) in MODELS


def pays(rects, frame: tuple[int, int]) -> bool:
    """Whether the input crop of ``rects`` (:func:`crop_rects`) is small enough to save time on ``frame``."""
    return rects[0][2] * rects[0][3] <= MAX_CROP_SHARE * frame[0] * frame[1]


def frame_shape(height: int, width: int, pad_multiple: int) -> tuple[int, int]:
    """The whole slice as the model sees it: padded to ``pad_multiple``, then (inside the model) to 32."""
    return padded_shape(*padded_shape(height, width, pad_multiple), MULTIPLE)


def crop_rects(inside: np.ndarray, frame: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row, col, height, width)`` in the frame of the input crop (the ROI box over all slices of
    ``inside``, ``(z, y, x)``, + ``CROP_MARGIN`` px) and of the output crop (+ ``DECODER_MARGIN`` px)."""
    return (_rect(inside, frame, CROP_MARGIN, ALIGN), _rect(inside, frame, DECODER_MARGIN, DECODER_ALIGN))


def _rect(inside, frame, margin: int, align: int) -> tuple[int, ...]:
    rect = []
    for axis, extent in ((1, frame[0]), (2, frame[1])):
        hits = np.flatnonzero(inside.any(axis=(0, 3 - axis)))
        low = max(0, hits[0] - margin) // align * align
        high = min(extent, -(-(hits[-1] + 1 + margin) // align) * align)
        size = min(extent, -(-(high - low) // ROI_GRID) * ROI_GRID)
        start = min(max(0, low - (size - high + low) // 2 // align * align), extent - size)
        assert start <= low and start + size >= high and start % align == 0
        rect.append((int(start), int(size)))
    return rect[0][0], rect[1][0], rect[0][1], rect[1][1]


def _encoders(module, variables) -> list[tuple[dict, tuple[int, ...]]]:
    """(variables, input phases) per encoder: MSF one per phase, ResSeg one over the stacked phases."""
    if isinstance(module, MSFResSeg):
        name = [encoder_name(p) for p in module.phases]
        return [({k: variables[k][n] for k in variables}, (i,)) for i, n in enumerate(name)]
    return [(variables, tuple(range(len(module.phases))))]


def _encoder(module, levels):
    return ResEncoder(module.width, module.dtype, module.bn_axis_name, levels)


@functools.partial(jax.jit, static_argnames=("module", "frame", "conv_impl"))
def zero_maps(module, variables, frame: tuple[int, int], conv_impl: str = "direct") -> list:
    """Per encoder, scales 1..SPLIT of the all-zero input in the frame (``[1, h, w, c]`` each), computed with the
    forward's CPU convolutions (``conv_impl``) so that they are the whole slice's values to the last bit."""
    maps = []
    for sub, phases in _encoders(module, variables):
        zeros = jnp.zeros((1, *frame, module.in_channels * len(phases)), module.dtype)
        with ops.conv_impl(conv_impl):
            maps.append(_encoder(module, (0, SPLIT)).apply(sub, zeros, False))
    return maps


def _assembled(crop, zeros, origin, frame, scale: int):
    """Scale ``scale`` over the frame: the crop's values where they are exact, the zero-input map elsewhere."""
    f, halo = 2**scale, HALO[scale]
    pasted = jax.lax.dynamic_update_slice(jnp.broadcast_to(zeros, (crop.shape[0], *zeros.shape[1:])), crop,
                                          (0, origin[0] // f, origin[1] // f, 0))
    keep = []
    for start, size, extent in zip(origin, crop.shape[1:3], frame):
        low = jnp.where(start == 0, 0, (start + halo + f - 1) // f)
        high = jnp.where(start + size * f == extent, extent // f, (start + size * f - halo) // f)
        q = jnp.arange(extent // f)
        keep.append((q >= low) & (q < high))
    mask = keep[0][:, None] & keep[1][None, :]
    return jnp.where(mask[None, :, :, None], pasted, zeros)


def _crop_probability(module, variables, maps, crops, origins, out_shape, frame):
    """Class-1 probability ``out_shape`` at ``origins[1]`` of the crops at ``origins[0]`` (traced), as whole slices
    of ``frame`` give it."""
    per_encoder = []
    for (sub, phases), zeros in zip(_encoders(module, variables), maps):
        x = jnp.concatenate([crops[i].astype(module.dtype) for i in phases], axis=-1)
        fine = _encoder(module, (0, SPLIT)).apply(sub, x, False)
        fine = [_assembled(f, z, origins[0], frame, s) for s, (f, z) in enumerate(zip(fine, zeros))]
        per_encoder.append(fine + _encoder(module, (SPLIT, 6)).apply(sub, fine[-1], False))
    options = {k: getattr(module, k) for k in ("phases", "in_channels", "width", "num_classes", "attention",
                                               "precise_attention", "fusion", "dtype", "bn_axis_name")}
    logits = FeatureDecoder(**options).apply(variables, *per_encoder, window=(origins[1], out_shape), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


@functools.partial(jax.jit, static_argnames=("module", "out_shape", "frame", "tta", "conv_impl"))
def crop_probability(module, variables, maps, crops: tuple, origins, out_shape: tuple[int, int],
                     frame: tuple[int, int], tta: bool = False, conv_impl: str = "direct") -> jax.Array:
    """Whole-slice class-1 probability ``[B, *out_shape]`` at ``origins[1]`` ``(row, col)`` of ``frame``, from
    the input crops (``[B, h, w, C]`` per phase) at ``origins[0]``, given ``maps = zero_maps(module, variables,
    frame)``; ``tta`` as in :func:`paresseg_jax.infer.predict.tumor_probability` (the frame flips, the crops move)."""
    total = 0.0
    sizes = (crops[0].shape[1:3], out_shape)
    for axes in FLIPS if tta else ((),):
        flipped = tuple(jnp.flip(x, axes) for x in crops) if axes else crops
        moved = jnp.stack([jnp.stack([frame[a] - origins[k][a] - sizes[k][a] if 1 + a in axes else origins[k][a]
                                      for a in (0, 1)]) for k in (0, 1)])
        with ops.conv_impl(conv_impl):
            out = _crop_probability(module, variables, maps, flipped, moved, out_shape, frame)
        total = total + (jnp.flip(out, axes) if axes else out)
    return total / (len(FLIPS) if tta else 1)


def plan(module, inside: np.ndarray, pad_multiple: int, tta: bool):
    """``(frame, crop rects)`` for ``module`` and the ROI ``inside`` (``(z, y, x)``) in full mode, or None: a model
    this module knows, a crop small enough to pay, and with ``tta`` a frame the flips keep (they flip the slice
    before the model pads it to 32)."""
    if not supported(module):
        return None
    frame = frame_shape(*inside.shape[1:], pad_multiple)
    if tta and frame != padded_shape(*inside.shape[1:], pad_multiple):
        return None
    rects = crop_rects(inside, frame)
    return (frame, rects) if pays(rects, frame) else None


def compiled_forward(module, variables, options, rects, frame):
    """The batch function of :func:`crop_probability` for the input and output crops ``rects`` (one
    device), compiled once per batch shape; the zero-input maps are computed once per volume."""
    tta, conv_impl = options
    with stage_times.stage("compilation"):
        lowered = zero_maps.lower(module, variables, frame, conv_impl)
    maps = counted(lowered)(variables)  # a forward pass of its own: the bound counts its FLOPs
    origin = np.array([rect[:2] for rect in rects], np.int32)
    out_shape = tuple(rects[1][2:])

    def compile_forward(shape):
        abstract = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for _ in module.phases)
        with stage_times.stage("compilation"):
            lowered = crop_probability.lower(module, variables, maps, abstract, origin, out_shape, frame,
                                             tta=tta, conv_impl=conv_impl)
        compiled = counted(lowered)
        return lambda inputs: compiled(variables, maps, inputs, origin)

    return compile_forward
