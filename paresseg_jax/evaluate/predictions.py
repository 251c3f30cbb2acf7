"""Scoring a folder of predicted masks against a cohort (``paresseg-evaluate --predictions``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from paresseg_jax import preflight
from paresseg_jax.data.case import mask_from_labels, read_case, read_labels, read_mask
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import BadInputError
from paresseg_jax.summary import evaluate_case, read_summary, write_summary
from paresseg_jax.workdir import check_not_trained_on


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
