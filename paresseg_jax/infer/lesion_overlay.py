"""A PNG per case where people look rather than read: its largest lesions, PV and ART side by side, numbered.

One row per axial slice where one of the largest ``max_lesions`` lesions
(numbered as ``lesions.csv`` numbers them) has its longest diameter; one
column per phase. Every lesion on the slice is outlined and its number written at its
centre. Agg canvas only, as ``infer.overlay``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paresseg_jax.atomic import atomic_path
from paresseg_jax.infer.overlay import PREDICTION_COLOR
from paresseg_jax.lesions import components


def lesion_overlay(images: Mapping[str, np.ndarray], tumor: np.ndarray, lesions: Sequence[Mapping],
                   path: str | os.PathLike, *, spacing_zyx: Sequence[float], title: str = "",
                   max_lesions: int = 4) -> Path:
    """Write the PNG: ``images`` phase -> windowed ``(z, y, x)`` in [0, 1] (PV first; its other phases
    beside it), ``tumor`` the mask whose ``lesions`` (``lesions.lesion_table`` records) are drawn."""
    labels, _ = components(tumor)
    shown = list(lesions[:max_lesions])
    by_slice = {}
    for lesion in shown:
        by_slice.setdefault(lesion["diameter_slice"], []).append(lesion)
    phases = list(images)
    rows = max(1, len(by_slice))
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    height, width = np.shape(tumor)[1:]
    figure = Figure(figsize=(3.2 * len(phases), 3.2 * rows * aspect * height / width + 0.5), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    for row, z in enumerate(by_slice or [np.shape(tumor)[0] // 2]):
        for column, phase in enumerate(phases):
            axes = figure.add_subplot(rows, len(phases), row * len(phases) + column + 1)
            axes.imshow(images[phase][z], cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
            _outline(axes, labels[z])
            caption = f"{phase.upper()} slice {z}"
            if z in by_slice:
                caption += ": " + ", ".join(f"{lesion['lesion']} ({lesion['longest_diameter_mm']:.0f} mm)"
                                            for lesion in by_slice[z])
            axes.set_title(caption, fontsize=8)
            axes.set_axis_off()
    figure.suptitle(title if shown else f"{title}: no lesion")
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    return Path(path)


def _outline(axes, section: np.ndarray) -> None:
    """Contours of every lesion cut by this slice, each numbered at its centre."""
    for number in np.unique(section[section > 0]):
        inside = section == number
        axes.contour(inside.astype(np.float32), levels=[0.5], colors=PREDICTION_COLOR, linewidths=1.0)
        y, x = np.argwhere(inside).mean(axis=0)
        axes.text(x, y, str(int(number)), color="yellow", fontsize=9, ha="center", va="center", weight="bold")
