"""The paper's segmentation metrics (Sec. 4.A) and surface distances.

Per case, with A = ground truth and B = prediction (binary volumes):

- ``dice`` = 2|A∩B| / (|A| + |B|)
- ``voe``  = 1 - |A∩B| / |A∪B|         (volumetric overlap error)
- ``rvd``  = (|B| - |A|) / |A|          (signed: > 0 means over-segmentation)
- ``tpr``  = |A∩B| / |A|,  ``tnr`` = |¬A∩¬B| / |¬A|
- ``acc``  = (tpr + tnr) / 2            (mean per-class accuracy; Table 7)
- ``hd95`` = 95th percentile of the distances from every surface voxel of A
  to the surface of B and from every surface voxel of B to the surface of A
  (both directions pooled), in millimetres
- ``assd`` = mean of those same pooled distances (average symmetric surface
  distance), in millimetres

Surface voxels are mask voxels with a face neighbour outside the mask
(outside the array counts as outside). Distances are between voxel centres
with the physical ``spacing`` given in numpy axis order, e.g. ``(z, y, x)``.

Empty masks (a case where the ground truth or the prediction has no voxel)
follow these conventions, so that nothing undefined leaks into a mean:

- both empty: dice 1, voe 0, hd95 0, assd 0 (perfect agreement);
- prediction empty, ground truth not: dice 0, voe 1, tpr 0, rvd -1;
- ground truth empty: tpr, rvd and acc are None (they divide by |A|); dice
  is 0 and voe 1 unless the prediction is empty too;
- exactly one of them empty: hd95 and assd are None (no surface to reach);
- tnr is None only if the ground truth fills the whole array.

``None`` means undefined: :func:`summarize` leaves it out of that metric's
mean and reports how many cases it left out (``n_undefined``).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS = ("dice", "voe", "rvd", "tpr", "tnr", "acc", "hd95", "assd")
COUNTS = ("tp", "fp", "fn", "tn")


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> dict:
    """All metrics of one case plus the voxel counts ``tp, fp, fn, tn`` that pooling needs.

    ``spacing`` is per numpy axis (``(z, y, x)`` for a volume), in mm; ``None``
    means 1 along every axis. Returns plain Python floats/ints (JSON-ready).
    """
    pred, gt = _binary(pred, "pred"), _binary(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    spacing = _spacing(spacing, gt.ndim)
    result = dict(zip(COUNTS, confusion_counts(pred, gt)))
    result.update(overlap_metrics(**result))
    result.update(surface_metrics(pred, gt, spacing))
    return result


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Voxel counts ``(tp, fp, fn, tn)`` of ``pred`` against ``gt``; any value > 0 is foreground.

    The one place the counts are taken, so scoring, validation and the
    benchmarks pool and compare the same numbers.
    """
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn, int(gt.size - tp - fp - fn)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of ``pred`` against ``gt`` (any value > 0 is foreground; both empty: 1, as in the module doc)."""
    return overlap_metrics(*confusion_counts(pred, gt))["dice"]


def overlap_metrics(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Dice, VOE, RVD, TPR, TNR and ACC from voxel counts (conventions in the module doc)."""
    gt_size, pred_size, union = tp + fn, tp + fp, tp + fp + fn
    dice = 1.0 if union == 0 else 2.0 * tp / (gt_size + pred_size)
    voe = 0.0 if union == 0 else 1.0 - tp / union
    rvd = None if gt_size == 0 else (pred_size - gt_size) / gt_size
    tpr = None if gt_size == 0 else tp / gt_size
    tnr = None if tn + fp == 0 else tn / (tn + fp)
    acc = None if tpr is None or tnr is None else (tpr + tnr) / 2.0
    return dict(dice=dice, voe=voe, rvd=rvd, tpr=tpr, tnr=tnr, acc=acc)


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict:
    """HD95 and ASSD in the units of ``spacing`` (conventions in the module doc)."""
    if not pred.any() and not gt.any():
        return dict(hd95=0.0, assd=0.0)
    if not pred.any() or not gt.any():
        return dict(hd95=None, assd=None)
    pred, gt = _crop_to_union(pred, gt)
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[gt_surface]
    distances = np.concatenate([to_gt, to_pred])
    return dict(hd95=float(np.percentile(distances, 95)), assd=float(distances.mean()))


def summarize(cases: Iterable[Mapping] | Mapping[str, Mapping]) -> dict:
    """Cohort summary of :func:`case_metrics` results (a list, or a dict keyed by case id).

    ``dpc`` is the mean per-case Dice and ``dg`` the Dice of all voxels pooled
    (from the summed counts), as in the paper; every other metric is the
    mean over the cases where it is defined. ``n_undefined`` counts, per
    metric, the cases left out of its mean; a metric undefined for every case
    is ``None``. Case dicts from :func:`overlap_metrics` plus counts (no
    surface distances) are summarized over the metrics they have.
    """
    cases = list(cases.values()) if isinstance(cases, Mapping) else list(cases)
    if not cases:
        raise ValueError("summarize needs at least one case")
    totals = {k: sum(int(c[k]) for c in cases) for k in COUNTS}
    summary = dict(n_cases=len(cases), dpc=float(np.mean([c["dice"] for c in cases])))
    summary["dg"] = overlap_metrics(**totals)["dice"]
    undefined = {}
    for name in (m for m in METRICS if m in cases[0]):
        values = [c[name] for c in cases if c[name] is not None]
        summary[name] = float(np.mean(values)) if values else None
        undefined[name] = len(cases) - len(values)
    summary["n_undefined"] = undefined
    return summary


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{name} must be a binary mask (0/1 or bool); threshold probabilities first")
    return mask.astype(bool)


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} must have {ndim} positive values, one per array axis (z, y, x)")
    return spacing


def _crop_to_union(pred: np.ndarray, gt: np.ndarray):
    """Both masks cut to the box of their union plus one empty voxel all round.

    Surfaces and the distances between them only involve voxels in that box,
    so the result is exact and the distance transforms stay small.
    """
    hits = np.nonzero(pred | gt)
    box = tuple(slice(int(h.min()), int(h.max()) + 1) for h in hits)
    return np.pad(pred[box], 1), np.pad(gt[box], 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)
