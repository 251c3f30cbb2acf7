"""Lesions: the connected components of a tumor mask, counted and measured.

A lesion is a 3D connected component of the tumor voxels with 26-connectivity
(face, edge and corner neighbours; ``CONNECTIVITY``), as MONAI's
``KeepLargestConnectedComponent`` and ``summary.slice_groups`` count
them: a lesion cut into voxels that meet only diagonally on thick slices stays
one lesion. Two lesions that touch are one; nothing splits them.

Diameters follow RECIST 1.1 / WHO on axial slices: on each slice the longest
distance between two voxel centres of the lesion's cross-section, the lesion's
longest axial diameter being the largest over its slices; its perpendicular is
the longest chord of that cross-section at right angles to it, on the same
slice. Voxel centres, not voxel edges, so a digital ellipse of semi-axes a and b
voxels measures 2a and 2b voxel spacings. HU statistics are population mean and
sd (ddof 0) over the lesion's voxels in each phase given, in HU on the PV grid
(other phases as registered to PV). Lesions are numbered 1, 2, ... by
decreasing volume, the numbers ``lesions.csv`` and the reports use.
"""

from __future__ import annotations

import csv
import io as text_io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from paresseg_jax.atomic import write_text

CONNECTIVITY = np.ones((3, 3, 3), bool)
CSV_FILE = "lesions.csv"
CSV_COLUMNS = ("case_id", "lesion", "volume_ml", "longest_diameter_mm", "perpendicular_diameter_mm",
               "diameter_slice", "first_slice", "last_slice", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
               "mean_probability")


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, count)``: the mask's lesions labelled 1..count in decreasing volume (ties: first voxel first)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=CONNECTIVITY)
    if count < 2:
        return labels.astype(np.int32), count
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(count + 1, np.int32)
    relabel[order + 1] = np.arange(1, count + 1, dtype=np.int32)
    return relabel[labels], count


def axial_diameters(section: np.ndarray, spacing_yx: Sequence[float]) -> tuple[float, float]:
    """``(longest, perpendicular)`` in mm of one axial cross-section (a 2D boolean mask), RECIST / WHO style."""
    points = np.argwhere(section) * np.asarray(spacing_yx, float)
    if len(points) < 2:
        return 0.0, 0.0
    hull = _hull(points)
    distances = cdist(hull, hull)
    i, j = np.unravel_index(np.argmax(distances), distances.shape)
    longest = float(distances[i, j])
    axis = (hull[j] - hull[i]) / longest
    along, across = points @ axis, points @ np.array([-axis[1], axis[0]])
    bins = np.round(along / min(spacing_yx)).astype(np.int64)  # one chord per voxel-wide band across the axis
    order = np.argsort(bins, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(bins[order]) != 0])
    widths = np.maximum.reduceat(across[order], starts) - np.minimum.reduceat(across[order], starts)
    return longest, float(widths.max())


def _hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices (the longest distance joins two of them); all points when they are collinear."""
    if len(points) < 4:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        return points


def longest_axial_diameter(lesion: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float, int]:
    """``(longest, perpendicular, slice)``: the lesion's largest axial diameter over its slices (a 3D mask)."""
    best = (0.0, 0.0, -1)
    for z in np.flatnonzero(lesion.any(axis=(1, 2))):
        longest, perpendicular = axial_diameters(lesion[z], spacing_zyx[1:])
        if longest > best[0] or best[2] < 0:
            best = (longest, perpendicular, int(z))
    return best


def patient_point(index_zyx: Sequence[float], geometry: Any) -> list[float]:
    """A (fractional) voxel index in array order as patient coordinates (x, y, z) in mm, DICOM LPS as in ITK."""
    index_xyz = np.asarray(index_zyx, float)[::-1]
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    point = np.asarray(geometry.origin, float) + direction @ (np.asarray(geometry.spacing, float) * index_xyz)
    return [float(v) for v in point]


def lesion_table(tumor: np.ndarray, geometry: Any, *, phases_hu: Mapping[str, np.ndarray] | None = None,
                 prob: np.ndarray | None = None) -> list[dict]:
    """One record per lesion of a tumor mask. ``geometry``: spacing, origin, direction in SimpleITK order
    (a ``data.case.Case`` or ``data.images.Geometry``); ``phases_hu``: phase -> HU volume on the same grid; ``prob``: the
    tumor probability."""
    spacing_zyx = tuple(float(s) for s in reversed(geometry.spacing))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    labels, count = components(tumor)
    records = []
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        lesion = labels[box] == number
        offset = np.array([s.start for s in box], float)
        longest, perpendicular, z = longest_axial_diameter(lesion, spacing_zyx)
        record = {"lesion": number, "volume_ml": int(lesion.sum()) * voxel_ml, "longest_diameter_mm": longest,
                  "perpendicular_diameter_mm": perpendicular, "diameter_slice": int(offset[0]) + z,
                  "first_slice": box[0].start, "last_slice": box[0].stop - 1,
                  "centroid_mm": patient_point(offset + np.argwhere(lesion).mean(axis=0), geometry)}
        if prob is not None:
            record["mean_probability"] = float(np.asarray(prob)[box][lesion].mean())
        record["hu"] = {name: {"mean": float(values.mean()), "sd": float(values.std())}
                        for name, values in ((name, np.asarray(hu)[box][lesion].astype(np.float64))
                                             for name, hu in (phases_hu or {}).items())}
        records.append(record)
    return records


def study_lesions(tumor: np.ndarray, liver: np.ndarray | None, geometry: Any, *,
                  phases_hu: Mapping[str, np.ndarray] | None = None, prob: np.ndarray | None = None) -> dict:
    """A study's lesions: ``count``, ``tumor_burden_pct`` (tumor volume as a percentage of the liver's, the
    liver being liver and tumor voxels together; None without a liver mask) and ``lesions`` (:func:`lesion_table`)."""
    tumor = np.asarray(tumor) > 0
    lesions = lesion_table(tumor, geometry, phases_hu=phases_hu, prob=prob)
    burden = None
    if liver is not None:
        organ = int(np.count_nonzero(tumor | (np.asarray(liver) > 0)))
        burden = 100.0 * int(tumor.sum()) / organ if organ else None
    return {"count": len(lesions), "tumor_burden_pct": burden, "lesions": lesions}


def csv_rows(case_id: str, lesions: Sequence[Mapping]) -> list[dict]:
    """A case's lesions as flat ``lesions.csv`` rows (HU columns ``<phase>_hu_mean`` and ``<phase>_hu_sd``)."""
    rows = []
    for lesion in lesions:
        row = {"case_id": case_id, **{k: v for k, v in lesion.items() if k not in ("centroid_mm", "hu")}}
        row.update(zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), lesion["centroid_mm"]))
        for phase, stats in lesion.get("hu", {}).items():
            row[f"{phase}_hu_mean"], row[f"{phase}_hu_sd"] = stats["mean"], stats["sd"]
        rows.append(row)
    return rows


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """``lesions.csv`` (whole or not at all): the fixed columns, then every HU column any row has, in
    first-seen order; a value a row lacks is left empty. Floats with 2 decimals (4 for probabilities)."""
    columns = dict.fromkeys(CSV_COLUMNS)
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(k, v) for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def _cell(column: str, value):
    if isinstance(value, float):
        return f"{value:.4f}" if column == "mean_probability" else f"{value:.2f}"
    return value
