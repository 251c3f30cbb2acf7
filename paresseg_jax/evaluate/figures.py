"""Report figures: training curves, DPC per tumor type. (Overlays: :mod:`paresseg_jax.infer.overlay`.)

Drawn on Agg canvases with matplotlib's object API: no display, no global state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paresseg_jax.atomic import atomic_path
from paresseg_jax.errors import MissingInputError
from paresseg_jax.workdir import read_metrics


def training_curves(workdirs: Mapping[str, str | os.PathLike], path: str | os.PathLike) -> Path:
    """Training loss and validation Dice (global and per-case mean) against step, one line per workdir.

    Reads each ``<workdir>/metrics.jsonl`` written by ``paresseg-train``.
    """
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, dice_axes = figure.subplots(1, 2)
    for name, workdir in workdirs.items():
        if not (Path(workdir) / "metrics.jsonl").is_file():
            raise MissingInputError("has no metrics.jsonl", path=workdir, fix="give a workdir written by paresseg-train")
        records = read_metrics(workdir)
        train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "loss" in r]
        val = [(r["step"], r.get("global_dice"), r.get("mean_dice")) for r in records if r["split"] == "val"]
        if train:
            steps, loss = np.array(train).T
            loss_axes.plot(steps, loss, label=name)
        if val:
            steps = [v[0] for v in val]
            line = dice_axes.plot(steps, [v[1] for v in val], marker="o", label=f"{name} DG")[0]
            dice_axes.plot(steps, [v[2] for v in val], marker="x", linestyle="--", color=line.get_color(), label=f"{name} DPC")
    loss_axes.set(xlabel="step", ylabel="training loss", title="training loss")
    dice_axes.set(xlabel="step", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    for axes in (loss_axes, dice_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return _save(figure, path)


def per_type_bars(runs: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """Grouped bars of DPC (%) per tumor type (Tables 8/11 as a picture), one bar per run."""
    types = sorted({t for content in runs.values() for t in content["summary"]["per_type"]})
    figure = Figure(figsize=(max(6, 1.4 * len(types) * max(1, len(runs)) / 2 + 2), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / max(1, len(runs))
    positions = np.arange(len(types))
    for i, (name, content) in enumerate(runs.items()):
        per_type = content["summary"]["per_type"]
        values = [100 * per_type[t]["dpc"] if t in per_type else 0.0 for t in types]
        bars = axes.bar(positions + (i - (len(runs) - 1) / 2) * width, values, width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(positions, types)
    axes.set(ylabel="DPC (%)", ylim=(0, 100), title="Dice per case by tumor type")
    axes.legend(fontsize=8)
    return _save(figure, path)


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    return Path(path)
