"""A PNG montage a person can look at: the slices with tumor, prediction in red, ground truth in green.

Drawn with matplotlib's object API on an Agg canvas, so importing or calling
this never touches a global backend or needs a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from paresseg_jax.atomic import atomic_path

PREDICTION_COLOR = "red"
GROUND_TRUTH_COLOR = "lime"


def montage_slices(pred: np.ndarray, gt: np.ndarray | None = None, max_slices: int = 12) -> np.ndarray:
    """Slices with tumor in the prediction or the ground truth, at most ``max_slices`` spread evenly.

    A volume without any tumor gives its middle slice, so the picture is never empty.
    """
    has_tumor = np.asarray(pred).any(axis=(1, 2))
    if gt is not None:
        has_tumor |= np.asarray(gt).any(axis=(1, 2))
    candidates = np.flatnonzero(has_tumor)
    if not len(candidates):
        return np.array([pred.shape[0] // 2])
    if len(candidates) <= max_slices:
        return candidates
    picks = np.round(np.linspace(0, len(candidates) - 1, max_slices)).astype(int)
    return candidates[picks]


def overlay_montage(
    image: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    gt: np.ndarray | None = None,
    spacing_zyx: Sequence[float] | None = None,
    max_slices: int = 12,
    columns: int = 4,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of axial slices of ``image`` (``(z, y, x)``, [0, 1]) with mask outlines.

    ``spacing_zyx`` sets the pixel aspect ratio (non-square in-plane voxels).
    """
    image, pred = np.asarray(image), np.asarray(pred) > 0
    gt = None if gt is None else np.asarray(gt) > 0
    for name, mask in (("prediction", pred), ("ground truth", gt)):
        if mask is not None and mask.shape != image.shape:
            raise ValueError(f"the {name} has shape {mask.shape} but the image {image.shape}; they must share the PV grid")
    slices = montage_slices(pred, gt, max_slices)
    columns = min(columns, len(slices))
    rows = math.ceil(len(slices) / columns)
    aspect = 1.0 if spacing_zyx is None else float(spacing_zyx[1]) / float(spacing_zyx[2])
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows * aspect * image.shape[1] / image.shape[2] + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for i, z in enumerate(slices):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(image[z], cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        for mask, color in ((gt, GROUND_TRUTH_COLOR), (pred, PREDICTION_COLOR)):
            if mask is not None and mask[z].any():
                axes.contour(mask[z].astype(np.float32), levels=[0.5], colors=color, linewidths=1.0)
        axes.set_title(f"slice {int(z)}", fontsize=9)
        axes.set_axis_off()
    legend = [Line2D([], [], color=PREDICTION_COLOR, label="prediction")]
    if gt is not None:
        legend.append(Line2D([], [], color=GROUND_TRUTH_COLOR, label="ground truth"))
    figure.legend(handles=legend, loc="outside lower center", ncol=len(legend), frameon=False)
    if title:
        figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    return Path(path)
