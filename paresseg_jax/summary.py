"""Per-case evaluation records and the cohort's ``summary.json``.

Inference (``paresseg-predict`` with ground truth) and evaluation both write
these records, so they live below both and neither imports the other.

Like nnU-Net's summary.json, every case's metrics are saved before anything
is averaged, so any table can be rebuilt (and runs compared case by case)
without predicting again. Layout::

    {"info": {...},                         free-form: run name, config, folds
     "cases": [{"case_id", "tumor_type", "fold", "spacing_zyx",
                "metrics": paresseg_jax.metrics.case_metrics(...),
                "detection": paresseg_jax.lesion_metrics.lesion_detection(...),
                "slices": {"marginal": {...}, "middle": {...}, "tumor": {...}}}],
     "summary": {"all": summarize(...), "per_type": {type: summarize(...)},
                 "slices": {"marginal": ..., "middle": ..., "tumor": ...},
                 "detection": lesion_metrics.detection_scores(...)}}
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from paresseg_jax import lesions
from paresseg_jax.lesion_metrics import detection_scores, lesion_detection
from paresseg_jax.atomic import write_text
from paresseg_jax.errors import BadInputError, MissingInputError, read_json
from paresseg_jax.json_values import numpy_value
from paresseg_jax.metrics import COUNTS, case_metrics, confusion_counts, overlap_metrics, summarize

SUMMARY_FILE = "summary.json"
SLICE_GROUPS = ("marginal", "middle", "tumor")


def slice_groups(gt: np.ndarray) -> dict[str, np.ndarray]:
    """Table 12's split of a case's tumor slices into marginal and middle ones.

    Each tumor (a 3D connected component of the ground truth, diagonal
    neighbours included) spans axial slices ``z0..z1``: ``z0`` and ``z1`` are
    its marginal slices (its first and last, where the paper's boundary-
    enhanced loss weighs most), the slices between them its middle slices. A
    slice that is marginal for one tumor and middle for another counts as
    marginal. ``tumor`` is their union, every slice with ground-truth tumor.
    Returns boolean ``(z,)`` selections.
    """
    labels, _ = lesions.components(gt)
    marginal = np.zeros(labels.shape[0], bool)
    tumor = np.zeros(labels.shape[0], bool)
    for extent in ndimage.find_objects(labels):
        z0, z1 = extent[0].start, extent[0].stop - 1
        marginal[[z0, z1]] = True
        tumor[z0 : z1 + 1] = True
    return {"marginal": marginal, "middle": tumor & ~marginal, "tumor": tumor}


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float] | None,
    case_id: str,
    tumor_type: str | None = None,
    **info,
) -> dict:
    """One case's record: whole-volume metrics, and overlap metrics on its slice groups.

    A slice group is scored over all voxels of its slices (so TNR counts their
    background too); surface distances are left out there, since the slices
    of a group need not be adjacent. Groups without slices are omitted.
    """
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    record = {"case_id": str(case_id), "tumor_type": tumor_type, **info}
    record["spacing_zyx"] = None if spacing_zyx is None else [float(s) for s in spacing_zyx]
    record["metrics"] = case_metrics(pred, gt, spacing_zyx)
    record["detection"] = lesion_detection(pred, gt, spacing_zyx)
    record["slices"] = {}
    for group, selected in slice_groups(gt).items():
        if selected.any():
            counts = dict(zip(COUNTS, confusion_counts(pred[selected], gt[selected])))
            record["slices"][group] = {**counts, **overlap_metrics(**counts), "num_slices": int(selected.sum())}
    return record


def summarize_records(records: Sequence[Mapping]) -> dict:
    """Cohort summary: all cases, per tumor type, and per slice group (see :func:`summarize`)."""
    if not records:
        raise ValueError("no case records to summarize; evaluate at least one case")
    by_type = defaultdict(list)
    for record in records:
        by_type[record.get("tumor_type") or "unknown"].append(record["metrics"])
    slices = {}
    for group in SLICE_GROUPS:
        found = [r["slices"][group] for r in records if group in r.get("slices", {})]
        if found:
            slices[group] = summarize(found)
    return {
        "all": summarize([r["metrics"] for r in records]),
        "per_type": {t: summarize(cases) for t, cases in sorted(by_type.items())},
        "slices": slices,
        "detection": detection_scores([r["detection"] for r in records if "detection" in r]),
    }


def write_summary(path: str | os.PathLike, records: Sequence[Mapping], **info) -> Path:
    """Write ``summary.json`` (a file path, or a folder to put it in) with the records and their summary.

    Records without ``metrics`` (cases without ground truth) are kept but not
    summarized; ``summary`` is None when no record has metrics.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / SUMMARY_FILE
    scored = [r for r in records if "metrics" in r]
    content = {"info": info, "cases": list(records), "summary": summarize_records(scored) if scored else None}
    return write_text(path, json.dumps(content, indent=1, default=numpy_value))


def read_summary(path: str | os.PathLike) -> dict:
    """A ``summary.json``, given as the file or the folder holding it (a predictions folder or CV workdir)."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / SUMMARY_FILE
    if not file.is_file():
        raise MissingInputError("does not exist", path=file,
                                fix="give a summary.json written by paresseg-evaluate (or the folder holding it)")
    content = read_json(file, fix="give a summary.json written by paresseg-evaluate")
    if not isinstance(content, dict) or not isinstance(content.get("cases"), list):
        raise BadInputError("is not a paresseg summary (no list of 'cases')", path=file,
                            fix="give a summary.json written by paresseg-evaluate")
    return content
