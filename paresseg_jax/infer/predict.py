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
are computed, each whole by default. For ResSeg and MSF-ResSeg (PA-ResSeg)
in ``full`` mode on one device, whole slices are computed from a crop when
that saves time (:mod:`paresseg_jax.infer.exact_crop`; ARCHITECTURE.md, "The
exact ROI crop"): the encoders' scales 1-3 run on the ROI box +
``exact_crop.CROP_MARGIN`` px, the all-zero input's features stand in
outside it, and the deeper scales, the phase attention (whose channel
energies sum over every pixel) and the decoder see whole slices' features.
The probabilities are whole slices' (tested) for 1.4x fewer FLOPs with a
250 x 220 px box on 512 x 512 slices. ``crop_to_roi`` instead computes only
the ROI's in-plane bounding box (grown by ``roi_margin`` and rounded up to
``ROI_GRID`` pixels, so volumes share a few compiled shapes): 2.6x fewer
FLOPs for that box, but not the same function (the inputs outside the ROI
are zero, the features there are not, and the crop replaces them with zero
padding; RESULTS.md gives the measured difference).

A voxel is foreground where its probability is ``>= threshold``
(:func:`binarize`), as in the reference.

Slices or tiles go through the model in batches of a fixed shape (the last
batch is padded), so a volume compiles the model once per mode and size.
While the device runs one batch the host prepares the next. On a CPU a batch
holds at most ``CPU_BATCH_PIXELS`` pixels (by default): the forward pass's
buffers live in host memory and grow with the pixels in flight, so a study's
peak memory is bounded by the batch, not by the volume. With several local
devices each batch is sharded across them along its first axis (its length
rounded up to a multiple of the device count) and the weights replicated, so
the slices of one study run on all of them at once (the exact crop runs on
one device).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax import ops, stage_times
from paresseg_jax.infer.batches import full_slices, overlap_tiles

MODES = ("full", "tile")
# The ROI crop's height and width are multiples of this (or the whole image side).
ROI_GRID = 64
_RESSEG_MODULE = "paresseg_jax.models.resseg"
FLIPS = ((), (1,), (2,), (1, 2))
# Default cap on the pixels of one forward pass on a CPU: one whole 512 x 512 slice. PA-ResSeg width 64's
# forward pass then peaks at 1.5 GB RSS with direct convolutions, 2.5 GB with Winograd ('fast': transformed
# tiles 4x the activations) for ~12% less time (direct takes ~14% more; shared 2-core CPU), hence direct by default.
CPU_BATCH_PIXELS = 512 * 512


@functools.partial(jax.jit, static_argnames=("module", "tta", "conv_impl"))
def tumor_probability(module, variables, inputs: tuple, tta: bool = False, conv_impl: str = "direct") -> jax.Array:
    """Softmax probability of class 1 (``[B, H, W]``) for one batch of NHWC inputs, one per phase.

    With ``tta`` the batch is also run flipped along H, W and both, and the
    four unflipped probabilities are averaged (the training augmentation
    flips, so the model has seen every orientation). ``conv_impl`` is the CPU
    convolution of :func:`paresseg_jax.ops.conv_impl`: inference defaults to
    'direct', since Winograd's ('fast') transformed tiles cost more memory
    than the forward pass saves in time (see ``CPU_BATCH_PIXELS``).
    """

    def probability(xs):
        with ops.conv_impl(conv_impl):
            logits = module.apply(variables, *xs, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]

    if not tta:
        return probability(inputs)
    total = 0.0
    for axes in FLIPS:
        flipped = tuple(jnp.flip(x, axes) for x in inputs) if axes else inputs
        out = probability(flipped)
        total = total + (jnp.flip(out, axes) if axes else out)
    return total / len(FLIPS)


@dataclasses.dataclass(frozen=True)
class VolumePlan:
    """What :func:`predict_volume` computes for one volume shape and ROI, compiled: made from no image, so
    beside the images' preparation (``Segmenter.segment_case`` makes it while registration runs)."""

    shape: tuple[int, int, int]
    inside: np.ndarray | None  # the ROI, or None
    slices: np.ndarray  # the slices computed
    box: tuple[slice, slice, slice] | None = None  # the part of the volumes the model reads
    window: tuple[slice, slice, slice] | None = None  # the part of the probability its output fills
    run: Callable | None = None  # run(volumes, slices, prob[window], report(done))


def volume_plan(
    module,
    variables: Mapping,
    shape: tuple[int, int, int],
    roi: np.ndarray | None = None,
    *,
    mode: str = "full",
    tile: int = 224,
    stride: int = 112,
    weighting: str = "pyramid",
    batch_size: int = 8,
    tta: bool = False,
    pad_multiple: int = 32,
    crop_to_roi: bool = False,
    roi_margin: int = 32,
    batch_pixels: int = 0,
    conv_impl: str = "direct",
) -> VolumePlan:
    """The :class:`VolumePlan` of a ``(z, y, x)`` volume ``shape`` with this ``roi``: its forward passes
    compiled, and for the exact crop the all-zero input's maps computed. The options are :func:`predict_volume`'s."""
    batch_pixels = _batch_pixels(mode, batch_size, batch_pixels)
    inside = None if roi is None else np.asarray(roi) > 0
    slices = np.arange(shape[0]) if roi is None else np.flatnonzero(inside.any(axis=(1, 2)))
    if not len(slices):
        return VolumePlan(tuple(shape), inside, slices)
    variables = jax.device_put(variables)
    exact = None if roi is None or crop_to_roi else _exact_plan(module, inside, mode, pad_multiple, tta)
    box = _input_box(inside, exact, crop_to_roi, roi_margin)
    forward = functools.partial(_compiled_forward, module, variables, tta, conv_impl)
    if exact:  # a slice holds whole-frame maps (scales 1-6, fusion): the pixel cap counts the frame
        frame, rects = exact
        forward = _exact_crop().compiled_forward(module, variables, (tta, conv_impl), rects, frame)
        batching = batch_length(batch_size, batch_pixels, frame[0] * frame[1])
        return VolumePlan(tuple(shape), inside, slices, box, _box(rects[1]),
                          full_slices(forward, module.in_channels, batching, tuple(rects[0][2:])))
    if mode == "full":
        boxed = np.empty(shape, bool)[box].shape[1:]  # a view: no memory
        padded = padded_shape(*boxed, pad_multiple)
        run = full_slices(forward, module.in_channels, batch_length(batch_size, batch_pixels, padded[0] * padded[1]),
                          padded)
    else:
        run = overlap_tiles(forward, module.in_channels, batch_length(batch_size, batch_pixels, tile * tile), tile,
                            stride, weighting)
    return VolumePlan(tuple(shape), inside, slices, box, box, run)


def predict_volume(
    module,
    variables: Mapping,
    images: Mapping[str, np.ndarray],
    roi: np.ndarray | None = None,
    *,
    plan: VolumePlan | None = None,
    slices: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> np.ndarray:
    """Tumor (class 1) probability volume ``(z, y, x)`` float32 of a windowed study.

    ``images`` maps phase name -> ``(z, y, x)`` volume in [0, 1] (PV geometry,
    other phases registered to it); the model's ``phases`` must all be there.
    With a ``roi`` (the dilated liver mask), voxels outside it are set to 0 in
    the inputs (as the paper does), slices without ROI are not computed, and
    the probability outside the ROI is 0 (computed from a crop where that is
    exact and saves time: module docstring); with ``crop_to_roi`` only the
    ROI's bounding box plus ``roi_margin`` pixels (see :func:`roi_box`) is
    computed, a speed option that changes attention models' output.
    A batch holds at most ``batch_size`` slices or tiles and, when more than
    one, at most ``batch_pixels`` pixels (0: ``CPU_BATCH_PIXELS`` on a CPU,
    no cap on accelerators). ``conv_impl``: CPU convolutions, 'direct' or
    'fast' (Winograd; see :func:`tumor_probability`). ``options`` are those of
    :func:`volume_plan` (mode, tile, stride, weighting, batch_size, tta,
    pad_multiple, crop_to_roi, roi_margin, batch_pixels, conv_impl), or a
    ``plan`` made from them ahead for this shape and ROI. ``slices``: only
    these are computed (stacks from the whole volume), 0 elsewhere.
    ``progress(done, total)`` is called with the slices computed so far after
    each batch.
    """
    phases, shape = _check_inputs(module, images, roi)
    if plan is None:
        plan = volume_plan(module, variables, shape, roi, **options)
    elif options or plan.shape != shape or (roi is None) != (plan.inside is None) or (
            roi is not None and not np.array_equal(plan.inside, np.asarray(roi) > 0)):
        raise ValueError("a plan is made for one volume shape and ROI, with the options given to volume_plan")
    prob = np.zeros(shape, np.float32)
    todo = _computed_slices(plan.slices, slices, shape[0])
    if len(todo):
        volumes = _model_inputs(images, phases, plan.inside, plan.box)
        report = (lambda done: None) if progress is None else (lambda done: progress(done, len(todo)))
        plan.run(volumes, todo, prob[plan.window], report)
    if roi is not None:
        prob[~plan.inside] = 0.0
    return prob


def _computed_slices(planned: np.ndarray, asked, depth: int) -> np.ndarray:
    """The slices a volume's forward passes cover: the plan's (those holding ROI) among those ``asked`` (all by
    default)."""
    if asked is None:
        return planned
    asked = np.unique(np.asarray(asked, int))
    if len(asked) and (asked[0] < 0 or asked[-1] >= depth):
        raise ValueError(f"slices {asked[0]}..{asked[-1]} lie outside the volume's {depth}")
    return planned[np.isin(planned, asked)]


def _batch_pixels(mode: str, batch_size: int, batch_pixels: int) -> int:
    """The pixel cap of a batch once ``mode`` and the batch settings are checked (0 asked: automatic)."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r} (config.eval.mode); choose one of {MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (config.eval.batch_size)")
    if batch_pixels < 0:
        raise ValueError(f"batch_pixels={batch_pixels} must be >= 0 (config.eval.batch_pixels; 0: automatic)")
    if batch_pixels == 0:
        return CPU_BATCH_PIXELS if jax.default_backend() == "cpu" else 0
    return batch_pixels


def _input_box(inside, exact, crop_to_roi: bool, roi_margin: int) -> tuple[slice, slice, slice]:
    """The ``(z, y, x)`` part of the volumes the model reads: the exact crop's input crop, the ROI's box
    (``crop_to_roi``), or all of it."""
    if exact:
        return _box(exact[1][0])
    if crop_to_roi and inside is not None:
        return (slice(None), *roi_box(inside, roi_margin))
    return (slice(None), slice(None), slice(None))


def _model_inputs(images, phases, inside, box) -> dict[str, np.ndarray]:
    """Each phase's ``box`` as float32, 0 outside the ROI ``inside`` (if any): gated copies of the box only."""
    volumes = {p: np.asarray(images[p], np.float32)[box] for p in phases}
    if inside is None:
        return volumes
    return {p: np.where(inside[box], v, np.float32(0)) for p, v in volumes.items()}


def _box(rect) -> tuple[slice, slice, slice]:
    row, col, height, width = rect
    return slice(None), slice(row, row + height), slice(col, col + width)


def padded_shape(height: int, width: int, pad_multiple: int) -> tuple[int, int]:
    """A slice's height and width zero-padded to multiples of ``pad_multiple``."""
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple={pad_multiple} must be >= 1 (config.eval.pad_multiple)")
    return tuple(math.ceil(n / pad_multiple) * pad_multiple for n in (height, width))


def binarize(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask of ``prob >= threshold``: the reference marks tumor where p >= 0.6."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


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


def batch_length(batch_size: int, batch_pixels: int, item_pixels: int) -> int:
    """Items per forward pass: ``batch_size``, fewer if they hold over ``batch_pixels`` pixels (0: no cap), >= 1,
    then rounded up to a multiple of the local devices (each takes an equal share)."""
    if batch_pixels > 0:
        batch_size = max(1, min(batch_size, batch_pixels // item_pixels))
    devices = jax.local_device_count()
    return -(-batch_size // devices) * devices


def _device_shardings():
    """``(batch sharded over the local devices, replicated)`` shardings, or None with one device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    spec = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, spec("batch")), jax.sharding.NamedSharding(mesh, spec())


def _exact_plan(module, inside, mode: str, pad_multiple: int, tta: bool):
    """``(frame, crop rects)`` of :mod:`exact_crop` when it computes whole slices' probabilities for less
    (:func:`exact_crop.plan`), else None; never on several devices (they shard whole slices)."""
    # A ResSeg exists only once the model code is imported; an exported model runs without it.
    if mode != "full" or _RESSEG_MODULE not in sys.modules or jax.local_device_count() > 1:
        return None
    return _exact_crop().plan(module, inside, pad_multiple, tta)


def _exact_crop():
    """:mod:`paresseg_jax.infer.exact_crop`, imported when used: it imports the model code."""
    import paresseg_jax.infer.exact_crop as exact_crop  # the module itself (its package is a later layer)

    return exact_crop


def _compiled_forward(module, variables, tta, conv_impl, shape):
    """The batch function, traced and compiled once for ``shape`` (batches sharded over the local devices, if
    several), after checking (from the trace, before compiling) that it keeps H and W. Calling the jitted
    function instead would trace the model a second time (about 0.4 s for PA-ResSeg)."""
    if conv_impl not in ("direct", "fast"):
        raise ValueError(f"conv_impl={conv_impl!r} (config.eval.conv_impl): choose 'direct' or 'fast'")
    shardings = _device_shardings()
    batch = None if shardings is None else shardings[0]
    if shardings is not None:
        variables = jax.device_put(variables, shardings[1])
    abstract = tuple(jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch) for _ in module.phases)
    with stage_times.stage("compilation"):
        lowered = tumor_probability.lower(module, variables, abstract, tta=tta, conv_impl=conv_impl)
        if tuple(lowered.out_info.shape) != tuple(shape[:3]):
            raise ValueError(
                f"{type(module).__name__} maps {shape[1]}x{shape[2]} inputs to {lowered.out_info.shape[1:]} outputs; "
                "use a tile size or pad_multiple (config.eval.tile / config.eval.pad_multiple) that the model's "
                "down-sampling divides"
            )
    # a sharded program's analysis counts one device's share
    compiled = counted(lowered, 1 if batch is None else len(jax.local_devices()))
    return lambda inputs: compiled(variables, inputs if batch is None else jax.device_put(inputs, batch))


def counted(lowered, copies: int = 1) -> Callable:
    """``lowered`` compiled in the 'compilation' stage; while a study's stages are recorded, each call of the
    result adds its FLOPs (``copies`` times XLA's count) to them, so the study's bound counts every pass."""
    with stage_times.stage("compilation"):
        compiled = lowered.compile()
    flops = (cost_flops(compiled) or 0.0) * copies if stage_times.is_recording() else None

    def call(*args):
        if flops is not None:
            stage_times.add_forward(flops)
        return compiled(*args)

    return call


def cost_flops(stage) -> float | None:
    """FLOPs of one call from XLA's cost analysis of a lowered or compiled function (None if it gives none)."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # noqa: BLE001  (a backend without cost analysis)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


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
