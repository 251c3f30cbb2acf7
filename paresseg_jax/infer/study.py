"""Segment a study from files: NIfTI/MHA/NRRD files or DICOM series folders in, NIfTI out in PV geometry.

The study is prepared as training prepared its cases (``paresseg_jax.data``):
other phases resampled onto the PV grid and registered to PV, every phase
windowed to [0, 1]. When the model comes from a ``paresseg-train`` workdir,
that run's preprocessing and ``eval`` settings are used, so a model is always
fed what it was trained on; explicit arguments override them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from paresseg_jax import model_io, preflight
from paresseg_jax.atomic import atomic_path
from paresseg_jax.data import io, preprocess
from paresseg_jax.errors import BadInputError
from paresseg_jax.infer.cascade import options_from_config, segment_study
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.metrics import case_metrics
from paresseg_jax.workdir import read_config


def training_config(model_path: str | os.PathLike) -> dict | None:
    """The config of the training run that exported a saved model, or None (e.g. a converted checkpoint)."""
    model_dir = model_io.resolve_model_dir(model_path)
    for folder in (model_dir, model_dir.parent):
        config = read_config(folder)
        if config is not None:
            return config
    return None


def read_study(
    phase_paths: Mapping[str, str | os.PathLike],
    *,
    liver: str | os.PathLike | None = None,
    tumor: str | os.PathLike | None = None,
    preprocess_config: Mapping | None = None,
    case_id: str = "study",
    resample_masks: bool = False,
) -> tuple[io.Case, dict[str, np.ndarray], dict]:
    """``(case in HU, windowed images, registration report)`` of one study.

    ``phase_paths`` maps phase names ('pv' required) to image files or DICOM
    folders; ``liver`` and ``tumor`` are optional 0/1 masks on any grid
    on the PV grid (on another grid only with ``resample_masks``: resampled onto it).
    """
    if "pv" not in phase_paths or phase_paths["pv"] is None:
        raise BadInputError("a study needs its PV image (--pv): PV is the target phase")
    entry = io.CaseEntry(
        case_id,
        {name: Path(path) for name, path in phase_paths.items()},
        liver=None if liver is None else Path(liver),
        tumor=None if tumor is None else Path(tumor),
        resample_masks=resample_masks,
    )
    case = io.read_case(entry)
    config = preprocess.resolve_config(preprocess_config)
    phases, report = dict(case.phases), {}
    if config["register"]:
        for name in [p for p in phases if p != "pv"]:
            try:
                transform, report[name] = preprocess.register_phase(phases["pv"], phases[name], case,
                                                                    config["registration"])
            except RuntimeError as error:
                raise preprocess.registration_failure(error, phase_paths[name]) from None
            phases[name] = preprocess.apply_transform(phases[name], case, transform)
    low, high = config["window"]
    images = {name: preprocess.hu_window(array, low, high) for name, array in phases.items()}
    return case, images, report


def predict_files(
    phase_paths: Mapping[str, str | os.PathLike | None],
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    liver_model: str | os.PathLike | None = None,
    liver: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    prob_out: str | os.PathLike | None = None,
    overlay_out: str | os.PathLike | None = None,
    eval_config: Mapping | None = None,
    preprocess_config: Mapping | None = None,
    resample_masks: bool = False,
) -> dict:
    """Segment one study and write the mask (and optionally probability, overlay) in PV geometry.

    ``model`` / ``liver_model``: a saved model or a ``paresseg-train`` workdir.
    ``liver``: a liver mask file to take the ROI from instead of a liver
    model. ``gt``: a tumor mask to score against and draw in green.
    ``resample_masks``: allow masks on another grid than PV (else refused).
    Every path and both models are checked before any image is read, and the
    outputs are written together at the end, whole or not at all.
    ``eval_config`` (keys of a config's ``eval`` section) and
    ``preprocess_config`` override the training run's settings; what neither
    sets takes the library defaults (those of ``paresseg_jax.config_defaults``).
    Returns a report: paths written, tumor volume (ml), registration, metrics.
    """
    preflight.prediction(phase_paths, model, out, liver_model=liver_model, liver=liver, gt=gt, prob_out=prob_out,
                         overlay_out=overlay_out)
    module = model_io.check_model(model)[0]
    if liver_model is not None:
        model_io.check_model(liver_model)
    given = {name: path for name, path in phase_paths.items() if path is not None}
    missing = [p for p in module.phases if p not in given]
    if missing:
        flags = ", ".join(f"--{p}" for p in missing)
        raise BadInputError(f"the model uses phases {tuple(module.phases)}", path=model,
                            fix=f"give the missing image(s) with {flags}")
    unused = [p for p in given if p not in module.phases]
    if unused:
        raise BadInputError(f"the model uses phases {tuple(module.phases)}, not {unused}", path=model,
                            fix=f"leave out {', '.join(f'--{p}' for p in unused)} or use a model trained on them")
    trained = training_config(model) or {}
    settings = {**dict(trained.get("eval", {})), **dict(eval_config or {})}
    if preprocess_config is None:
        preprocess_config = trained.get("data", {}).get("preprocess")
    case, images, registration = read_study(
        {p: given[p] for p in module.phases}, liver=liver, tumor=gt, preprocess_config=preprocess_config,
        resample_masks=resample_masks,
    )
    roi_dilation = preprocess.resolve_config(preprocess_config)["roi_dilation"]
    result = segment_study(
        images,
        model_io.load_model(model)[:2],
        liver_model=None if liver_model is None else model_io.load_model(liver_model)[:2],
        liver=case.liver,
        roi_dilation=roi_dilation,
        **options_from_config(settings),
    )
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    report = {"mask": str(out), "registration": registration, "tumor_voxels": int(result["mask"].sum())}
    report["tumor_ml"] = report["tumor_voxels"] * voxel_ml
    report["roi"] = "none" if result["roi"] is None else ("liver mask" if liver is not None else "liver model")
    if case.tumor is not None:
        report["metrics"] = case_metrics(result["mask"], case.tumor, case.spacing_zyx)
    with contextlib.ExitStack() as outputs:  # all outputs appear together, or none does
        io.write_image(result["mask"], case, outputs.enter_context(atomic_path(out)))
        if prob_out is not None:
            report["prob"] = str(prob_out)
            io.write_image(result["prob"], case, outputs.enter_context(atomic_path(prob_out)))
        if overlay_out is not None:
            report["overlay"] = str(overlay_out)
            overlay_montage(
                images["pv"], result["mask"], outputs.enter_context(atomic_path(overlay_out)), gt=case.tumor,
                spacing_zyx=case.spacing_zyx,
                title=f"{Path(phase_paths['pv']).name}: prediction (red)" + (", ground truth (green)" if gt else ""),
            )
    return report
