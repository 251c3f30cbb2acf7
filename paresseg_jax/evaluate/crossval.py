"""The paper's k-fold cross-validation, and scoring a folder of predicted masks.

Protocol (paper, Sec. 4): folds stratified by tumor type
(``paresseg_jax.data.splits``, ``config.data.num_folds``, 5 by default); fold
k trains on the other folds (``paresseg-train`` with ``config.data.fold = k``,
in ``<workdir>/fold_k``; validation, if any, carved from those folds) and
segments the fold's held-out cases through the paper's cascade: a
liver-ResSeg trained on the same folds (``<liver_workdir>/fold_k``, by
default ``<workdir>/liver/fold_k``) predicts each case's liver, whose 5x5
dilation is the tumor model's ROI. Scoring is
:func:`paresseg_jax.evaluate.scoring.score_run`'s (the model of
``config.eval.checkpoint``, whole slices, ``p >= threshold``); the per-case
records of all folds go into ``<workdir>/summary.json``. A finished training
of the same config is not repeated, a stopped one resumes from its
checkpoints (``loop.train_unless_finished``), and a fold's ``summary.json``
is reused only when its provenance (models, config, protocol, cases, cache)
is what scoring would use now, so an interrupted cross-validation continues
where it stopped and a changed one is never relabelled.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np

from paresseg_jax import config_defaults, preflight
from paresseg_jax.data.case import mask_from_labels, read_case, read_labels, read_mask
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import BadInputError
from paresseg_jax.evaluate.scoring import CASCADE, protocol, score_run
from paresseg_jax.summary import evaluate_case, read_summary, write_summary
from paresseg_jax.train.loop import train_unless_finished
from paresseg_jax.workdir import check_not_trained_on

LIVER_DIR = "liver"


def cross_validate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    folds: Sequence[int] | None = None,
    overlays: bool = False,
    liver_workdir: str | os.PathLike | None = None,
) -> dict:
    """Train and score every fold (or the given ones); returns the ``summary.json`` content of ``workdir``.

    With ``config.eval.roi`` 'cascade' (the default) each fold's liver-ResSeg
    is trained too (``config_defaults.liver_stage``: ResSeg, cross-entropy, liver target) in ``liver_workdir/fold_k``
    unless it is there already, so several tumor experiments can share one.
    """
    workdir = Path(workdir)
    num_folds = int(config.data.num_folds)
    folds = list(range(num_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{num_folds - 1} (config.data.num_folds={num_folds})")
    cascade = config.data.target == "tumor" and config.eval.roi == CASCADE
    liver_root = Path(liver_workdir) if liver_workdir is not None else workdir / LIVER_DIR
    records = []
    for fold in folds:
        fold_dir = workdir / f"fold_{fold}"
        fold_config = copy.deepcopy(config)
        fold_config.data.fold = fold
        liver_dir = liver_root / f"fold_{fold}" if cascade else None
        if cascade:
            train_unless_finished(config_defaults.liver_stage(fold_config), liver_dir)
        train_unless_finished(fold_config, fold_dir)
        records += score_run(fold_dir, liver_workdir=liver_dir, overlays=overlays, title=f"fold {fold}", reuse=True)["cases"]
    roi = config.eval.get("roi", CASCADE)
    write_summary(workdir, records, folds=folds, num_folds=num_folds, config=config.to_dict(),
                  **protocol(config.eval.to_dict(), roi, config.data.target))
    return read_summary(workdir)


def evaluate_folder(
    predictions: str | os.PathLike,
    cohort: str | os.PathLike,
    out: str | os.PathLike | None = None,
    resample_masks: bool = False,
    tumor_label: int | None = None,
    allow_training_cases: bool = False,
) -> dict:
    """Score a folder of predictions ``<case_id>.nii.gz`` against a cohort's tumor masks.

    A prediction is a 0/1 tumor mask or a label map whose tumor label is
    ``tumor_label``; by default the one a ``paresseg-predict`` folder's
    ``summary.json`` names (2, LiTS), else 1. Every case of the cohort
    (``paresseg_jax.data.layouts.read_cohort``) needs a prediction, on the case's
    PV grid (on another grid only with ``resample_masks``: resampled onto it).
    Every prediction file is found before any is read. Cases without a tumor
    mask are listed unscored. Writes ``summary.json`` into ``out`` (default:
    the predictions folder). Cases that the predicting models' runs (the
    ``models`` a ``paresseg-predict`` summary names) trained or validated on
    are refused unless ``allow_training_cases``.
    """
    predictions = Path(predictions)
    found = preflight.predictions(predictions, cohort)
    check_not_trained_on(found, _predicting_models(predictions), predictions, allow_training_cases)
    if tumor_label is None:
        tumor_label = predicted_tumor_label(predictions)
    records = []
    for entry in read_cohort(cohort):
        case = read_case(entry)
        if case.tumor is None:
            records.append({"case_id": case.case_id, "tumor_type": case.metadata.get("tumor_type")})
            continue
        path = found[entry.case_id]
        if tumor_label == 1:
            pred = read_mask(path, case, "predicted tumor", resample=resample_masks)
        else:
            labels = read_labels(path, case, "predicted", resample=resample_masks)
            unknown = sorted(set(np.unique(labels).tolist()) - {0, 1, tumor_label})
            if unknown:
                raise BadInputError(f"prediction has labels {unknown}", path=path,
                                    fix=f"expected 0, 1 (liver) and {tumor_label} (tumor); --tumor_label sets it")
            pred = mask_from_labels(labels, (tumor_label,))
        records.append(evaluate_case(pred, case.tumor, case.spacing_zyx, case.case_id, case.metadata.get("tumor_type")))
    if not any("metrics" in r for r in records):
        raise BadInputError("no case has a tumor mask to score against", path=cohort,
                            fix="give a cohort with tumor masks")
    out = predictions if out is None else Path(out)
    write_summary(out, records, predictions=str(predictions), cohort=str(cohort), labels={"tumor": tumor_label})
    return read_summary(out)


def _predicting_models(predictions: Path) -> list[str]:
    """The tumor and liver model folders a ``paresseg-predict`` folder's ``summary.json`` names ([] without one)."""
    try:
        info = read_summary(predictions)["info"]
    except FileNotFoundError:
        return []
    return list(info.get("models") or []) + list(info.get("liver_models") or [])


def predicted_tumor_label(predictions: str | os.PathLike) -> int:
    """The tumor label a predictions folder's ``summary.json`` records (paresseg-predict writes 2), else 1."""
    try:
        return int(read_summary(predictions)["info"].get("labels", {}).get("tumor", 1))
    except FileNotFoundError:
        return 1
