"""Grain input pipeline: paired 2.5D patches for training, full slices for evaluation.

Training (the reference code's recipe): one record
per (case, slice) over the slices inside the case's liver z-range; per record
a 2.5D stack (slices z-1, z, z+1, edges replicated) for every phase, one crop
position drawn in the case's liver bounding box, one random rot90 (0-3) and
one random flip, all shared by every phase, the tumor label and the
boundary-enhanced weight map, so phases stay voxel-aligned.

Crop rule (per in-plane axis; box ``[b0, b1)``, crop size ``s``, image size
``n``): the window start is drawn uniformly from the integers in
``[min(b0, b1 - s), max(b0, b1 - s)]`` (a box at least as large as the crop
contains the window; a smaller box is contained in it), then clipped to
``[min(0, n - s), max(0, n - s)]`` so the window stays inside the image, or,
for an image smaller than the crop, covers it; pixels outside the image are 0
in images, label and weight.

Two targets (``config.data.target``): ``'tumor'`` (the tumor model) reads
images with voxels outside the case's dilated liver ROI set to 0 (the paper's
ROI input) and the tumor label; ``'liver'`` (stage 1 of the cascade, the
liver-ResSeg) reads whole images and the liver label, over every slice, with
the crop box the whole image.

Randomness comes from Grain: the sampler gives each record a generator seeded
by (seed, position in the stream), so a seed fixes order and augmentation and a
restored iterator state continues both exactly (the seed is hashed first:
``stream_seed``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags

from paresseg_jax import absent_phases
from paresseg_jax.data import misregistration as misregistration_lib
from paresseg_jax.data.cache import CachedCase
from paresseg_jax.data.windows import check_in_channels, displaced_window, read_window, slice_indices
from paresseg_jax.worker_processes import usable_workers

MAX_CROP_SIZE = 1024
ITERATOR_ITEM = "data_iterator"
"""Name of the data iterator inside the training checkpoint's orbax Composite."""
TARGETS = ("tumor", "liver")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"config.data.target={target!r} is unknown; choose one of {TARGETS}")


def sampling_box(case: CachedCase, target: str) -> tuple[int, ...]:
    """Half-open (z0, z1, y0, y1, x0, x1) where slices and crops are drawn: the liver box, or all for the liver target."""
    if target == "liver":
        return tuple(v for n in case.shape for v in (0, n))
    return tuple(case.liver_bbox)


def crop_start(rng: np.random.Generator, box_lo: int, box_hi: int, size: int, extent: int) -> int:
    """Window start along one axis by the module's crop rule."""
    lo, hi = sorted((box_lo, box_hi - size))
    start = int(rng.integers(lo, hi + 1))
    return int(np.clip(start, min(0, extent - size), max(0, extent - size)))


class LiverSliceSource:
    """Random-access source: one record ``{'case': CachedCase, 'z': int}`` per slice.

    Slices inside each case's liver z-range (every slice for the ``'liver'``
    target) are kept; of those without tumor
    only ``tumor_free_fraction`` (rounded, chosen by ``seed``) are kept. Records
    are small, so workers read only the crop windows they need.
    """

    def __init__(
        self, cases: Sequence[CachedCase], *, tumor_free_fraction: float = 1.0, seed: int = 0, target: str = "tumor"
    ):
        check_target(target)
        if not cases:
            raise ValueError("no cases given to the training pipeline; check the fold's case list and the cache folder")
        if not 0.0 <= tumor_free_fraction <= 1.0:
            raise ValueError(f"config.data.tumor_free_fraction={tumor_free_fraction} must lie in [0, 1]")
        self._cases = tuple(cases)
        self._fraction = float(tumor_free_fraction)
        self._seed = int(seed)
        self._target = target
        case_index, z, has_tumor = [], [], []
        for i, case in enumerate(self._cases):
            z0, z1 = sampling_box(case, target)[:2]
            case_index += [i] * (z1 - z0)
            z += range(z0, z1)
            if self._fraction < 1.0:
                has_tumor.append(np.asarray(case.tumor[z0:z1]).any(axis=(1, 2)))
        case_index, z = np.asarray(case_index, np.int64), np.asarray(z, np.int64)
        if self._fraction < 1.0 and len(z):
            has_tumor = np.concatenate(has_tumor)
            free = np.flatnonzero(~has_tumor)
            kept_free = np.random.default_rng(self._seed).permutation(free)[: round(self._fraction * len(free))]
            keep = np.sort(np.concatenate([np.flatnonzero(has_tumor), kept_free]))
            case_index, z = case_index[keep], z[keep]
        if not len(z):
            ids = [c.case_id for c in self._cases]
            raise ValueError(
                f"the training source over cases {ids} has no slices (empty liver z-ranges, or only tumor-free "
                f"slices with config.data.tumor_free_fraction={self._fraction}); raise the fraction or check the cache"
            )
        self._case_index, self._z = case_index, z

    def __len__(self) -> int:
        return len(self._z)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"case": self._cases[self._case_index[index]], "z": int(self._z[index])}

    def __repr__(self) -> str:
        # Grain compares this text when restoring an iterator state, so it names the data (not the
        # cache's location, which may move between machines).
        cases = "\n".join(f"{c.case_id} {c.shape} {c.liver_bbox}" for c in self._cases)
        ids = hashlib.sha256(cases.encode()).hexdigest()[:12]
        return (
            f"LiverSliceSource(cases={len(self._cases)}, cases_sha={ids}, records={len(self)}, "
            f"tumor_free_fraction={self._fraction}, seed={self._seed}, target={self._target})"
        )


class PairedPatch(grain.transforms.RandomMap):
    """Record -> paired training patch (see the module docstring for the rule).

    Output: one ``[H, W, in_channels]`` float32 array per phase (ROI-gated
    for the tumor target), ``'label'`` ``[H, W]`` int32 0/1 of the target and
    ``'weight'`` ``[H, W]`` float32. With
    ``intensity_jitter = a > 0`` each phase is independently scaled by
    ``1 + U(-a, a)``, shifted by ``U(-a, a)`` and clipped to [0, 1]. With
    ``misregistration`` amplitudes (``{'shift_mm', 'deformation_mm'}``) each
    non-PV phase is read displaced against PV (before the ROI gate, which
    is PV's; :mod:`paresseg_jax.data.misregistration`). With
    ``phase_dropout = p > 0`` each non-PV phase is then replaced by the
    absent-phase input (zeros) with probability p (``paresseg_jax.absent_phases``).
    """

    def __init__(
        self,
        phases: Sequence[str],
        in_channels: int,
        crop_size: int = 224,
        intensity_jitter: float = 0.0,
        target: str = "tumor",
        phase_dropout: float = 0.0,
        misregistration: Mapping[str, float] | None = None,
    ):
        check_target(target)
        check_crop_size(crop_size)
        check_in_channels(in_channels)
        if intensity_jitter < 0:
            raise ValueError(f"config.data.intensity_jitter={intensity_jitter} must be >= 0 (0 turns it off)")
        self.phases = tuple(phases)
        self.in_channels = int(in_channels)
        self.crop_size = int(crop_size)
        self.intensity_jitter = float(intensity_jitter)
        self.target = target
        self.phase_dropout = absent_phases.check_probability(phase_dropout)
        self.misregistration = misregistration_lib.check_settings(misregistration)

    def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        case, z = element["case"], element["z"]
        depth, height, width = case.shape
        _, _, y0, y1, x0, x1 = sampling_box(case, self.target)
        size = self.crop_size
        top = crop_start(rng, y0, y1, size, height)
        left = crop_start(rng, x0, x1, size, width)
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))

        def augment(window: np.ndarray, dtype=np.float32) -> np.ndarray:
            """[C, H, W] window -> rotated, flipped [H, W, C] array (one copy); [H, W] likewise."""
            window = np.rot90(window, turns, axes=(-2, -1))
            window = window[..., ::-1, :] if flip else window
            return np.ascontiguousarray(np.moveaxis(window, 0, -1) if window.ndim == 3 else window, dtype=dtype)

        zs = slice_indices(z, depth, self.in_channels)
        windows = {p: read_window(case.image(p), zs, top, left, size) for p in self.phases}
        if any(self.misregistration.values()):
            spacing_zyx = case.spacing_zyx
            for p in [p for p in self.phases if p != "pv"]:
                moved = misregistration_lib.random_displacement((len(zs), size, size), spacing_zyx,
                                                                self.misregistration, rng)
                windows[p] = displaced_window(case.image(p), zs, top, left, size, moved)
        if self.target == "tumor":
            outside = read_window(case.roi, zs, top, left, size) == 0
            windows = {p: np.where(outside, np.float32(0), w) for p, w in windows.items()}
        out = {p: augment(w) for p, w in windows.items()}
        if self.intensity_jitter:
            a = self.intensity_jitter
            for p in self.phases:
                scale, shift = rng.uniform(-a, a, size=2)
                out[p] = np.clip(out[p] * np.float32(1 + scale) + np.float32(shift), 0, 1).astype(np.float32)
        if self.phase_dropout:
            absent_phases.drop_phases(out, self.phases, self.phase_dropout, rng)
        centre = np.array([z])
        label = case.tumor if self.target == "tumor" else case.liver
        out["label"] = augment(read_window(label, centre, top, left, size)[0], np.int32)
        out["weight"] = augment(read_window(case.weight, centre, top, left, size)[0])
        return out


def check_crop_size(crop_size: int) -> None:
    if not isinstance(crop_size, (int, np.integer)) or not 0 < crop_size <= MAX_CROP_SIZE:
        raise ValueError(f"config.data.crop_size={crop_size!r} must be an integer in 1..{MAX_CROP_SIZE} (the paper uses 224)")


AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 16


def auto_worker_count(backend: str | None = None, cpus: int | None = None) -> int:
    """Grain workers for ``config.data.worker_count = -1``: none on a CPU backend, whose train step takes
    1/2000 of what one process loads (BENCHMARKS.md), so workers would only take cores from XLA; on an
    accelerator one per CPU beyond two left to the training process, at most 16. Measured on a 16-core H200
    host: 233 patches/s without workers, about 170 more per worker (729 / 1,386 at 4 / 8), so 14 workers
    project to about 2,400 patches/s, above the 1,400 samples/s goal of a bf16 step at batch 96."""
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cpus - 2, MAX_AUTO_WORKERS))


def resolve_worker_count(value: int) -> int:
    """``config.data.worker_count`` as a number of processes (-1: `auto_worker_count`)."""
    if not isinstance(value, (int, np.integer)) or value < AUTO_WORKERS:
        raise ValueError(f"config.data.worker_count={value!r} must be -1 (one per spare CPU on an accelerator "
                         "host, none on a CPU), 0 (load in the training process) or a number of processes")
    return auto_worker_count() if value == AUTO_WORKERS else int(value)


def stream_seed(seed: int) -> int:
    """The seed given to Grain: a hash of ``seed`` in [0, 2**32).

    Grain keys each record's generator by seed + stream position and each
    epoch's shuffle by seed + epoch, so seeds s and s + 1 would replay one
    stream shifted by a record and an epoch; hashed seeds keep runs apart.
    """
    return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


def make_train_loader(
    config,
    cases: Sequence[CachedCase],
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int | None = None,
    local_device_count: int | None = None,
) -> grain.DataLoader:
    """Infinite, shuffled, process-sharded loader of paired training batches.

    Each process gets ``config.train.batch_size / process_count`` patches per
    batch from its own disjoint shard of records (Grain's ``ShardOptions``;
    ``process_index``/``process_count`` default to the JAX process). Iterate
    it with ``iter(loader)``; the iterator's state goes into orbax checkpoints
    (``iterator_save_args``). ``worker_count`` defaults to
    ``config.data.worker_count`` (0 = no worker processes, -1 = `auto_worker_count`).
    """
    data = config.data
    shard = _process_shard(process_index, process_count)
    batch = _process_batch(int(config.train.batch_size), shard.shard_count, local_device_count)
    check_crop_size(data.crop_size)
    phases = tuple(config.model.phases)
    _check_phases(cases, phases)
    target = data.target
    source = LiverSliceSource(cases, tumor_free_fraction=data.tumor_free_fraction, seed=seed, target=target)
    if len(source) < shard.shard_count:
        raise ValueError(f"{len(source)} training slices cannot be shared by {shard.shard_count} processes; add cases")
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard, shuffle=True, num_epochs=None, seed=stream_seed(seed)
    )
    operations = [
        PairedPatch(phases, config.model.in_channels, data.crop_size, data.intensity_jitter, target,
                    phase_dropout=config.train.get("phase_dropout", 0.0),
                    misregistration=data.get("misregistration")),
        grain.transforms.Batch(batch_size=batch, drop_remainder=True),
    ]
    workers = usable_workers(resolve_worker_count(data.worker_count if worker_count is None else worker_count),
                             "data loading", 0)
    if workers and not flags.FLAGS.is_parsed():
        # Grain's worker processes read absl flags; outside an absl app (tests, notebooks) use the defaults.
        flags.FLAGS.mark_as_parsed()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=workers,
        worker_buffer_size=data.worker_buffer_size,
        shard_options=shard,
        # Our records only name a slice (the transform reads the window), so Grain's default 16 reader
        # threads just contend with the transform; one was 15-35% faster on a 16-core host.
        read_options=grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=max(4 * batch, 16)),
    )



def _process_shard(process_index: int | None, process_count: int | None) -> grain.sharding.ShardOptions:
    """This process's shard of the records (the JAX process unless both numbers are given)."""
    if (process_index is None) != (process_count is None):
        raise ValueError("give both process_index and process_count, or neither (then the JAX process is used)")
    if process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    # Grain's ShardByJaxProcess with explicit numbers, so the state's sampler text never depends on how they came.
    return grain.sharding.ShardOptions(process_index, process_count, drop_remainder=False)


def _process_batch(global_batch: int, processes: int, local_device_count: int | None) -> int:
    """Patches per process and batch; refuses a global batch that processes or local devices cannot share."""
    if global_batch <= 0 or global_batch % processes:
        raise ValueError(
            f"config.train.batch_size={global_batch} must be a positive multiple of the process count "
            f"{processes}; change the batch size or the number of processes"
        )
    batch = global_batch // processes
    devices = jax.local_device_count() if local_device_count is None else local_device_count
    if batch % devices:
        raise ValueError(
            f"the per-process batch {batch} (config.train.batch_size={global_batch} / {processes} processes) "
            f"is not divisible by the {devices} local devices; make config.train.batch_size a multiple of "
            f"{processes * devices}"
        )
    return batch


def _check_phases(cases: Sequence[CachedCase], phases: tuple[str, ...]) -> None:
    lacking = [f"{c.case_id} ({', '.join(c.phases)})" for c in cases if not set(phases) <= set(c.phases)]
    if lacking:
        raise ValueError(
            f"config.model.phases={phases}, but these cached cases lack some: {lacking}; "
            "preprocess them with those phases or train on fewer phases"
        )

def iterator_save_args(iterator: grain.DataLoaderIterator):
    """Orbax args that save a loader iterator: ``ocp.args.Composite(**{ITERATOR_ITEM: this, ...})``."""
    return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DataLoaderIterator):
    """Orbax args that restore a fresh ``iter(loader)`` in place to the saved position."""
    return grain.checkpoint.CheckpointRestore(iterator)
