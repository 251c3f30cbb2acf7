"""Report figures: training curves, DPC per tumor type, a study's spread and misalignment curves.
(Overlays: :mod:`paresseg_jax.infer.overlay`.)

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


def spread(entries: Mapping[str, tuple[list[float], list[float]]], path: str | os.PathLike) -> Path:
    """DPC (%) per entry with its spread: each case's Dice (dots, mean over seeds) in a box, and each seed's
    mean DPC (diamonds); ``entries``: label -> (per-case values, per-seed means), as fractions."""
    labels = list(entries)
    figure = Figure(figsize=(9, 0.45 * len(labels) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    positions = -np.arange(len(labels))  # first entry on top
    axes.boxplot([100 * np.asarray(entries[k][0]) for k in labels], positions=positions, widths=0.5,
                 showfliers=False, orientation="horizontal")
    jitter = np.random.default_rng(0)
    for y, label in zip(positions, labels):
        cases, seeds = entries[label]
        axes.scatter(100 * np.asarray(cases), y + jitter.uniform(-0.15, 0.15, len(cases)), s=10, alpha=0.5, color="C0")
        axes.scatter(100 * np.asarray(seeds), np.full(len(seeds), y + 0.3), marker="D", s=25, color="C3")
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set(xlabel="DPC (%)", xlim=(0, 100), title="Dice per case (dots, box) and per seed (red diamonds)")
    return _save(figure, path)


def per_type_grid(runs: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """DPC (%) per tumor type as a grid, one line per entry (many entries stay legible, unlike bars)."""
    labels = list(runs)
    types = sorted({t for content in runs.values() for t in content["summary"]["per_type"]})
    values = np.array([[100 * runs[k]["summary"]["per_type"].get(t, {}).get("dpc", np.nan) for t in types] for k in labels])
    figure = Figure(figsize=(1.1 * len(types) + 5, 0.4 * len(labels) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        axes.text(j, i, "-" if np.isnan(value) else f"{value:.1f}", ha="center", va="center", fontsize=8,
                  color="white" if value < 60 else "black")
    axes.set_xticks(range(len(types)), types)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_title("DPC (%) per tumor type")
    figure.colorbar(image, ax=axes, label="DPC (%)")
    return _save(figure, path)


def misalignment_curves(curves: Mapping[str, Mapping[str, list[tuple[float, float]]]], path: str | os.PathLike) -> Path:
    """Mean DPC (%) against the ART misalignment (mm) applied at test time: one colour per entry, a solid line
    for rigid shifts and a dashed one for deformations; ``curves``: label -> kind -> [(mm, DPC fraction)]."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for i, (label, kinds) in enumerate(curves.items()):
        for kind, points in kinds.items():
            mm, dpc = np.array(sorted(points)).T
            axes.plot(mm, 100 * dpc, marker="o", color=f"C{i}", linestyle="-" if kind == "shift" else "--",
                      label=f"{label} ({kind})")
    axes.set(xlabel="ART misalignment (mm)", ylabel="DPC (%)", ylim=(0, 100), title="Dice against ART misalignment")
    axes.legend(fontsize=8)
    return _save(figure, path)


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    return Path(path)
