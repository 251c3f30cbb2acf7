"""Lesion-level evaluation: detection by overlap, per-lesion Dice, precision / recall / F1, by lesion size.

Voxel metrics (``paresseg_jax.metrics``) let one big tumor outweigh ten small
ones; the LiTS benchmark therefore also scores detection lesion by lesion.
Lesions are the connected components of ``paresseg_jax.lesions`` (26-connected)
of the reference and the prediction. The matching rule, LiTS-like and
symmetric so that a lesion predicted in two pieces, or two lesions predicted as
one, are judged by their overlap as a whole:

- a reference lesion R is *detected* when IoU(R, U) > 0.5, U being the union of
  the predicted lesions that share a voxel with R;
- a predicted lesion P is *true* when it shares a voxel with a detected
  reference lesion (a piece of a detection), or when IoU(P, V) > 0.5, V being
  the union of the reference lesions that share a voxel with P; else it is a
  false positive;
- recall = detected / reference lesions, precision = true / predicted lesions,
  F1 = their harmonic mean; the per-lesion Dice of R is Dice(R, U), 0 for a
  lesion no prediction touches.

By size: the longest axial diameter (RECIST, ``lesions.longest_axial_diameter``)
bins reference lesions (recall, Dice) and predicted lesions (precision) into
< 10 mm, 10-20 mm and > 20 mm. A ratio without a denominator is None.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from paresseg_jax.lesions import components, longest_axial_diameter

IOU_THRESHOLD = 0.5
SIZE_BINS = ("<10mm", "10-20mm", ">20mm")


def size_bin(diameter_mm: float) -> str:
    """The size bin of a longest axial diameter: below 10 mm, 10 to 20 mm (both included), above 20 mm."""
    return SIZE_BINS[0] if diameter_mm < 10.0 else SIZE_BINS[1] if diameter_mm <= 20.0 else SIZE_BINS[2]


def lesion_detection(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float] | None = None) -> dict:
    """A case's lesions, matched: ``reference`` and ``predicted`` lists of ``{diameter_mm, iou, dice|true}``."""
    spacing = tuple(float(s) for s in spacing_zyx) if spacing_zyx is not None else (1.0, 1.0, 1.0)
    ref_labels, n_ref = components(gt)
    pred_labels, n_pred = components(pred)
    both = (ref_labels > 0) & (pred_labels > 0)
    overlap = np.zeros((n_ref + 1, n_pred + 1), np.int64)
    np.add.at(overlap, (ref_labels[both], pred_labels[both]), 1)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    reference = []
    for r, diameter in enumerate(_diameters(ref_labels, spacing), start=1):
        inter, union_size = _against_touching(overlap[r], pred_sizes)
        iou = inter / float(ref_sizes[r] + union_size - inter)
        reference.append({"diameter_mm": diameter, "iou": iou, "dice": 2 * inter / float(ref_sizes[r] + union_size),
                          "detected": iou > IOU_THRESHOLD})
    detected = np.array([False] + [r["detected"] for r in reference])
    predicted = []
    for p, diameter in enumerate(_diameters(pred_labels, spacing), start=1):
        inter, union_size = _against_touching(overlap[:, p], ref_sizes)
        iou = inter / float(pred_sizes[p] + union_size - inter)
        true = iou > IOU_THRESHOLD or bool(detected[overlap[:, p] > 0].any())
        predicted.append({"diameter_mm": diameter, "iou": iou, "true": true})
    return {"reference": reference, "predicted": predicted}


def _against_touching(row: np.ndarray, other_sizes: np.ndarray) -> tuple[float, float]:
    """``(intersection, size of the union)`` of one lesion with the other side's lesions it touches."""
    touching = np.flatnonzero(row[1:]) + 1
    return float(row[touching].sum()), float(other_sizes[touching].sum())


def _diameters(labels: np.ndarray, spacing_zyx: Sequence[float]) -> list[float]:
    return [longest_axial_diameter(labels[box] == number, spacing_zyx)[0]
            for number, box in enumerate(ndimage.find_objects(labels), start=1)]


def detection_scores(detections: Sequence[Mapping]) -> dict:
    """Pooled over cases (lesions counted, not cases averaged): ``all`` and each size bin, each with
    ``n_reference, detected, n_predicted, true, recall, precision, f1, lesion_dice`` (mean per-lesion Dice)."""
    reference = [lesion for d in detections for lesion in d["reference"]]
    predicted = [lesion for d in detections for lesion in d["predicted"]]
    scores = {"all": _scores(reference, predicted)}
    for name in SIZE_BINS:
        scores[name] = _scores([r for r in reference if size_bin(r["diameter_mm"]) == name],
                               [p for p in predicted if size_bin(p["diameter_mm"]) == name])
    return scores


def _scores(reference: Sequence[Mapping], predicted: Sequence[Mapping]) -> dict:
    detected = sum(bool(r["detected"]) for r in reference)
    true = sum(bool(p["true"]) for p in predicted)
    recall = detected / len(reference) if reference else None
    precision = true / len(predicted) if predicted else None
    f1 = None
    if recall is not None and precision is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    dice = float(np.mean([r["dice"] for r in reference])) if reference else None
    return {"n_reference": len(reference), "detected": detected, "n_predicted": len(predicted), "true": true,
            "recall": recall, "precision": precision, "f1": f1, "lesion_dice": dice}
