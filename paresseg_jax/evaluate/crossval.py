"""Score models on preprocessed cases, and the paper's k-fold cross-validation.

Protocol (paper, Sec. 4): folds stratified by tumor type
(``paresseg_jax.data.splits``, ``config.data.num_folds``, 5 by default); fold
k trains on the other folds (``paresseg-train`` with ``config.data.fold = k``,
in ``<workdir>/fold_k``) and its best model (by validation global Dice)
segments the fold's held-out cases, every slice, inside the case's liver ROI.
Each case is scored on its whole volume; the per-case records of all folds
go into ``<workdir>/summary.json``. A fold whose ``summary.json`` exists is
not repeated, and training resumes from its checkpoints, so an interrupted
cross-validation continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from paresseg_jax import model_io, preflight
from paresseg_jax.data import io
from paresseg_jax.data.cache import CachedCase
from paresseg_jax.errors import BadInputError, MissingInputError
from paresseg_jax.evaluate.summary import SUMMARY_FILE, evaluate_case, read_summary, write_summary
from paresseg_jax.infer.cascade import PREDICT_OPTIONS
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.infer.predict import predict_volume
from paresseg_jax.train.loop import train_and_evaluate, training_cases
from paresseg_jax.workdir import CONFIG_FILE

PREDICTIONS_DIR = "predictions"
OVERLAYS_DIR = "overlays"


def evaluate_cases(
    module,
    variables,
    cases: Sequence[CachedCase],
    eval_config: Mapping,
    out_dir: str | os.PathLike | None = None,
    overlays: bool = False,
    target: str = "tumor",
    **info,
) -> list[dict]:
    """Predict and score cached cases; records as :func:`evaluate_case` makes them.

    ``target`` 'tumor': inside the case's liver ROI, against the tumor mask;
    'liver' (the cascade's first stage): whole slices against the liver mask.
    With ``out_dir``, masks go to ``out_dir/predictions/<case_id>.nii.gz`` (PV
    geometry) and, with ``overlays``, PNG montages to ``out_dir/overlays/``.
    ``info`` (e.g. ``fold=k``) is added to every record.
    """
    if target not in ("tumor", "liver"):
        raise ValueError(f"target={target!r} (config.data.target) must be 'tumor' or 'liver'")
    options = {k: eval_config[k] for k in PREDICT_OPTIONS if k in eval_config}
    threshold = float(eval_config.get("threshold", 0.6))
    records = []
    for case in tqdm(cases, desc="evaluate", unit="case", leave=False):
        images = {p: case.image(p) for p in module.phases}
        roi, truth = (case.roi, case.tumor) if target == "tumor" else (None, case.liver)
        prob = predict_volume(module, variables, images, roi, **options)
        mask = (prob > threshold).astype(np.uint8)
        spacing_zyx = tuple(reversed(case.meta["spacing"]))
        records.append(
            evaluate_case(mask, truth, spacing_zyx, case.case_id, case.tumor_type, scanner=case.meta.get("scanner"), **info)
        )
        if out_dir is not None:
            io.write_image(mask, case.meta, Path(out_dir) / PREDICTIONS_DIR / f"{case.case_id}.nii.gz")
            if overlays:
                overlay_montage(
                    case.image("pv"), mask, Path(out_dir) / OVERLAYS_DIR / f"{case.case_id}.png", gt=truth,
                    spacing_zyx=spacing_zyx, title=f"{case.case_id} ({case.tumor_type}): prediction red, truth green",
                )
    return records


def evaluate_workdir(workdir: str | os.PathLike, overlays: bool = False, **info) -> dict:
    """Score a ``paresseg-train`` workdir's best model on its validation fold (its ``config.data.target``); writes ``summary.json`` there."""
    workdir = Path(workdir)
    config_file = workdir / CONFIG_FILE
    if not config_file.is_file():
        raise MissingInputError(f"has no {CONFIG_FILE}", path=workdir, fix="give a workdir written by paresseg-train")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    module, variables, _ = model_io.load_model(workdir)
    _, held_out = training_cases(config)
    target = config.data.get("target", "tumor")
    records = evaluate_cases(module, variables, held_out, config.eval.to_dict(), workdir, overlays, target, **info)
    write_summary(workdir, records, workdir=str(workdir), **info)
    return read_summary(workdir)


def cross_validate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    folds: Sequence[int] | None = None,
    overlays: bool = False,
) -> dict:
    """Train and score every fold (or the given ones); returns the ``summary.json`` content of ``workdir``."""
    workdir = Path(workdir)
    num_folds = int(config.data.num_folds)
    folds = list(range(num_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{num_folds - 1} (config.data.num_folds={num_folds})")
    records = []
    for fold in folds:
        fold_dir = workdir / f"fold_{fold}"
        if not (fold_dir / SUMMARY_FILE).is_file():
            fold_config = copy.deepcopy(config)
            fold_config.data.fold = fold
            train_and_evaluate(fold_config, str(fold_dir))
            evaluate_workdir(fold_dir, overlays, fold=fold)
        records += read_summary(fold_dir)["cases"]
    write_summary(workdir, records, folds=folds, num_folds=num_folds, config=config.to_dict())
    return read_summary(workdir)


def evaluate_folder(
    predictions: str | os.PathLike,
    cohort: str | os.PathLike,
    out: str | os.PathLike | None = None,
    resample_masks: bool = False,
    tumor_label: int | None = None,
) -> dict:
    """Score a folder of predictions ``<case_id>.nii.gz`` against a cohort's tumor masks.

    A prediction is a 0/1 tumor mask or a label map whose tumor label is
    ``tumor_label``; by default the one a ``paresseg-predict`` folder's
    ``summary.json`` names (2, LiTS), else 1. Every case of the cohort
    (``paresseg_jax.data.io.read_cohort``) needs a prediction, on the case's
    PV grid (on another grid only with ``resample_masks``: resampled onto it).
    Every prediction file is found before any is read. Cases without a tumor
    mask are listed unscored. Writes ``summary.json`` into ``out`` (default:
    the predictions folder).
    """
    predictions = Path(predictions)
    found = preflight.predictions(predictions, cohort)
    if tumor_label is None:
        tumor_label = predicted_tumor_label(predictions)
    records = []
    for entry in io.read_cohort(cohort):
        case = io.read_case(entry)
        if case.tumor is None:
            records.append({"case_id": case.case_id, "tumor_type": case.metadata.get("tumor_type")})
            continue
        path = found[entry.case_id]
        if tumor_label == 1:
            pred = io.read_mask(path, case, "predicted tumor", resample=resample_masks)
        else:
            labels = io.read_labels(path, case, "predicted", resample=resample_masks)
            unknown = sorted(set(np.unique(labels).tolist()) - {0, 1, tumor_label})
            if unknown:
                raise BadInputError(f"prediction has labels {unknown}", path=path,
                                    fix=f"expected 0, 1 (liver) and {tumor_label} (tumor); --tumor_label sets it")
            pred = io.mask_from_labels(labels, (tumor_label,))
        records.append(evaluate_case(pred, case.tumor, case.spacing_zyx, case.case_id, case.metadata.get("tumor_type")))
    if not any("metrics" in r for r in records):
        raise BadInputError("no case has a tumor mask to score against", path=cohort,
                            fix="give a cohort with tumor masks")
    out = predictions if out is None else Path(out)
    write_summary(out, records, predictions=str(predictions), cohort=str(cohort), labels={"tumor": tumor_label})
    return read_summary(out)


def predicted_tumor_label(predictions: str | os.PathLike) -> int:
    """The tumor label a predictions folder's ``summary.json`` records (paresseg-predict writes 2), else 1."""
    try:
        return int(read_summary(predictions)["info"].get("labels", {}).get("tumor", 1))
    except FileNotFoundError:
        return 1
