"""The paper's preprocessing: ART-to-PV registration, HU window, liver ROI, 3D BE weights, cache.

Order per case (paper, Sec. 3): every non-PV phase is registered to PV
(B-spline, Mattes mutual information, multi-resolution, after an optional
rigid or affine start), all phases are windowed to [-70, 180] HU and scaled
to [0, 1], the liver ROI (liver mask or a liver model's prediction, dilated
5 x 5 per slice) is stored beside them, and the boundary-enhanced weight map
(Eq. 5-6) is computed from the 3D tumor mask. Results go to the on-disk cache
(``paresseg_jax.data.cache``). Images are cached without the ROI applied:
readers of the tumor model set voxels outside the ROI to 0 (``roi_gate``),
while the liver model of the cascade trains on the same, whole images.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from paresseg_jax import config_defaults, stage_times
from paresseg_jax.data import cache
from paresseg_jax.data.case import Case, read_case, read_mask
from paresseg_jax.data.images import find_image
from paresseg_jax.data.layouts import CaseEntry, read_cohort
from paresseg_jax.data.registration import apply_transform, register_phase, registration_failure
from paresseg_jax.errors import MissingInputError
from paresseg_jax.worker_processes import usable_workers


# Bumped when a code change alters the cached arrays of an unchanged config; it is part of the resolved
# config, hence of the cache key, so caches made by older code are made again, not silently reused.
# 2: registration in one ITK work unit (reproducible; revision 1 registered differently run to run).
# 3: registration on the whole image, never in the ground-truth liver's box (``prepare_phases``).
REVISION = 3


def default_preprocess_config() -> dict:
    """The paper's preprocessing settings as a plain dict (its JSON hash keys the cache): ``config.data.preprocess``
    of ``paresseg_jax.config_defaults``, where each setting is declared and explained."""
    return config_defaults.get_config().data.preprocess.to_dict()


def resolve_config(preprocess_config: Mapping | None, base: Mapping | None = None) -> dict:
    """``base`` (default: the defaults) updated with the given settings (nested sections merged) plus
    ``revision``; unknown keys are an error, and so is a resolved config of another ``REVISION``."""
    given = preprocess_config.to_dict() if hasattr(preprocess_config, "to_dict") else dict(preprocess_config or {})
    revision = given.pop("revision", REVISION)
    if revision != REVISION:
        raise ValueError(f"preprocessing config of revision {revision}; this code makes revision {REVISION}")
    config = default_preprocess_config() if base is None else resolve_config(base)
    for key, value in given.items():
        if key not in config:
            raise KeyError(f"unknown preprocessing setting {key!r}; known: {sorted(config)}")
        if isinstance(config[key], dict):
            unknown = sorted(set(value) - set(config[key]))
            if unknown:
                raise KeyError(f"unknown {key} settings {unknown}; known: {sorted(config[key])}")
            config[key].update(copy.deepcopy(dict(value)))
        else:
            config[key] = copy.deepcopy(value)
    config["window"] = [float(v) for v in config["window"]]
    if config["registration"]["initial"] not in ("rigid", "affine", "none"):
        raise ValueError(f"registration initial must be 'rigid', 'affine' or 'none', got {config['registration']['initial']!r}")
    config["revision"] = REVISION
    return config


# ----------------------------------------------------------------------------- window, ROI, weights


def hu_window(hu: np.ndarray, low: float = -70.0, high: float = 180.0) -> np.ndarray:
    """Clip HU to [low, high] and scale to [0, 1] (float32)."""
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)


def roi_gate(image: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """The paper's ROI input: voxels outside the dilated liver ROI set to 0."""
    return np.where(np.asarray(roi) > 0, image, np.zeros((), np.asarray(image).dtype))


def liver_roi(liver: np.ndarray, dilation: int = 5) -> np.ndarray:
    """The liver mask dilated per slice by a ``dilation`` x ``dilation`` square (uint8 0/1)."""
    structure = np.ones((1, dilation, dilation), bool)
    return ndimage.binary_dilation(np.asarray(liver) > 0, structure=structure).astype(np.uint8)


def boundary_enhanced_weights(tumor: np.ndarray, w1: float = 0.8, w2: float = 0.2, alpha: float = 1.0, beta: float = 0.5) -> np.ndarray:
    """3D boundary-enhanced weight map (paper Eq. 5-6), float32 (z, y, x).

    v = 3x3x3 mean of the tumor mask; w = -alpha*v + alpha + w1 on tumor,
    beta*v + w2 on background. Voxels beyond the volume count as background
    (zero padding, like a 3x3x3 average pool with padding 1 that counts the
    padding), so a tumor cut by the first or last slice is weighted as a
    boundary there too.
    """
    mask = np.asarray(tumor) > 0
    v = ndimage.uniform_filter(mask.astype(np.float64), size=3, mode="constant", cval=0.0)
    return np.where(mask, -alpha * v + alpha + w1, beta * v + w2).astype(np.float32)


# ----------------------------------------------------------------------------- cases and cohorts


def prepare_phases(case: Case, preprocess_config: Mapping | None = None,
                   sources: Mapping | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(windowed images, registration report)``: the one preparation of a case's phases, for training and
    evaluation caches, ``paresseg-predict`` and ``infer.segment`` alike: :func:`registered_phases`, then
    :func:`windowed`."""
    phases, report = registered_phases(case, preprocess_config, sources)
    return windowed(phases, preprocess_config), report


def registered_phases(case: Case, preprocess_config: Mapping | None = None,
                      sources: Mapping | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(phases in HU, registration report)``: other phases registered to PV on the whole image (when the
    settings register; :func:`phase_transforms`, then :func:`resampled_phases`). Lesions are measured on these
    HU volumes."""
    transforms, report = phase_transforms(case, preprocess_config, sources)
    return resampled_phases(case, transforms), report


def phase_transforms(case: Case, preprocess_config: Mapping | None = None,
                     sources: Mapping | None = None) -> tuple[dict[str, sitk.Transform], dict]:
    """``(phase -> transform to PV, registration report)``, fitted on the whole image; none when the settings
    do not register. Nothing reads the case's masks, so a scored case is prepared exactly as a new study
    (``paresseg-bench registration`` measured the whole image against the liver's box). ``sources`` (phase ->
    file) name the image in a registration failure."""
    config = resolve_config(preprocess_config)
    transforms, report = {}, {}
    if config["register"]:
        for name in [p for p in case.phases if p != "pv"]:
            try:
                with stage_times.stage("registration"):
                    transforms[name], report[name] = register_phase(case.phases["pv"], case.phases[name], case,
                                                                    config["registration"])
            except RuntimeError as error:
                raise registration_failure(error, (sources or {}).get(name, name)) from None
    return transforms, report


def resampled_phases(case: Case, transforms: Mapping[str, sitk.Transform],
                     box: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """The case's phases in HU on the PV grid, each of ``transforms`` applied to its phase. With a ``box``
    (z0, z1, y0, y1, x0, x1) only its voxels are resampled, the values whole images give there; outside it a
    moved phase holds its minimum (``registration.apply_transform``): for a reader that reads nothing outside
    the box (the tumor model, whose inputs are 0 outside the ROI)."""
    phases = dict(case.phases)
    for name, transform in transforms.items():
        with stage_times.stage("resampling"):
            phases[name] = apply_transform(phases[name], case, transform, box=box)
    return phases


def windowed(phases: Mapping[str, np.ndarray], preprocess_config: Mapping | None = None) -> dict[str, np.ndarray]:
    """Every phase in HU windowed to [0, 1] by the settings' window."""
    low, high = resolve_config(preprocess_config)["window"]
    return {name: hu_window(array, low, high) for name, array in phases.items()}


def preprocess_case(case: Case, preprocess_config: Mapping | None = None, liver_prediction: np.ndarray | None = None,
                    sources: Mapping | None = None) -> dict:
    """Preprocessed arrays of one case, as keyword arguments of ``cache.store_case`` (less dir and id).

    Images from :func:`prepare_phases`; the ROI (which a scored case's
    cascade replaces with its liver model's) comes from ``liver_prediction``
    when given, else the case's liver mask.
    """
    config = resolve_config(preprocess_config)
    if case.tumor is None:
        raise ValueError(
            f"case {case.case_id!r} has no tumor mask; the cache holds training/evaluation cases "
            "(an empty tumor.nii.gz marks a healthy liver)"
        )
    roi_source = liver_prediction if liver_prediction is not None else case.liver
    if roi_source is None:
        raise ValueError(
            f"case {case.case_id!r} has no liver mask for the liver ROI; add liver.nii.gz or set roi_source to a folder of liver predictions"
        )
    images, registration = prepare_phases(case, config, sources)
    roi = liver_roi(roi_source, int(config["roi_dilation"]))
    liver = case.liver if case.liver is not None else np.asarray(roi_source, np.uint8)
    metadata = {
        **case.metadata,
        "spacing": list(case.spacing),
        "origin": list(case.origin),
        "direction": list(case.direction),
        "registration": registration,
    }
    return {
        "images": images,
        "liver": liver,
        "tumor": case.tumor,
        "roi": roi,
        "weight": boundary_enhanced_weights(case.tumor, **config["be_weights"]),
        "metadata": metadata,
    }


def preprocess_cohort(
    cohort_dir: str | os.PathLike,
    cache_root: str | os.PathLike,
    preprocess_config: Mapping | None = None,
    progress: bool = True,
    workers: int = 0,
) -> Path:
    """Preprocess every case of a cohort into ``cache_root/<config hash>/`` and return that folder.

    Cases already in the cache are skipped, so a killed run resumes where it
    stopped; each case is written atomically by ``cache.store_case``. Cases
    run in ``workers`` processes (0: one per CPU, at most 8; 1: in this
    process): registration is single-threaded for reproducibility, so
    processes are what uses the cores. Results do not depend on ``workers``.
    """
    from tqdm import tqdm

    config = resolve_config(preprocess_config)
    cache_dir = cache.cache_dir_for(cache_root, config)
    entries = read_cohort(cohort_dir)
    todo = [e for e in entries if not cache.is_cached(cache_dir, e.case_id)]
    predictions = None if config["roi_source"] == "liver" else Path(config["roi_source"])
    if predictions is not None and not predictions.is_dir():
        raise MissingInputError("roi_source is not a folder of liver predictions <case_id>.nii.gz", path=predictions,
                                fix="set config.data.preprocess.roi_source to 'liver' or to that folder")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per CPU), got {workers}")
    workers = usable_workers(min(workers or min(os.cpu_count() or 1, 8), len(todo)), "preprocessing", 1)
    bar = tqdm(total=len(entries), initial=len(entries) - len(todo), desc="preprocess", unit="case", disable=not progress)
    try:
        if workers <= 1:
            for entry in todo:
                _preprocess_into_cache(cache_dir, entry, config, predictions)
                bar.update(1)
        else:
            _preprocess_in_processes(cache_dir, todo, config, predictions, workers, bar)
    finally:
        bar.close()
    return cache_dir


def _preprocess_into_cache(cache_dir: Path, entry: CaseEntry, config: dict, predictions: Path | None) -> None:
    """Read, preprocess and atomically cache one case (the unit of work of ``preprocess_cohort``)."""
    case = read_case(entry)
    prediction = None
    if predictions is not None:
        path = find_image(predictions, entry.case_id)
        if path is None:
            raise MissingInputError(f"no liver prediction for case {entry.case_id!r} (expected {entry.case_id}.nii.gz)",
                                    path=predictions, fix="predict the liver of every case first")
        prediction = read_mask(path, case)
    cache.store_case(cache_dir, entry.case_id, **preprocess_case(case, config, prediction, entry.phases))


def _share_cores(threads: int) -> None:
    """Worker initializer: ITK's own threads (resampling, smoothing) split the cores among the workers."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _preprocess_in_processes(cache_dir, todo, config, predictions, workers: int, bar) -> None:
    """``_preprocess_into_cache`` over ``todo`` in ``workers`` spawned processes (fork is unsafe once JAX
    runs threads); the first failure cancels the cases not started and is raised here."""
    import concurrent.futures
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_share_cores, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_preprocess_into_cache, cache_dir, entry, config, predictions) for entry in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
