"""The main job end to end: synthetic cohort -> preprocessing -> three trainings ->
cascade inference on held-out cases -> ``report.md`` with tables and figures.

Stages (each reused when its output exists, so a rerun continues):
1. ``cohort/``: phantom cases covering the five tumor types and both scanner
   profiles (``paresseg_jax.data.phantom``).
2. ``cohort_cache/``: registration, HU window, ROI, BE weights (cached).
3. ``liver/``, ``resseg/``, ``paresseg/``: the cascade's liver-ResSeg, the
   single-phase (PV) ResSeg baseline and PA-ResSeg, trained on the same folds
   (``paresseg-train`` workdirs: they resume from their checkpoints).
4. ``eval/<run>/``: the held-out (test) fold segmented with the paper's
   cascade (the liver model's dilated prediction gates the tumor model) by
   :func:`paresseg_jax.evaluate.scoring.score_run`, as ``paresseg-evaluate``
   scores a run: per-case records in ``summary.json``, masks in PV geometry,
   overlays.
5. ``report.md`` beside PNG figures.
Stages 3 and 4 are one fold (fold 0) of :func:`paresseg_jax.experiments.folds.run_fold`, as
cross-validation and the ablation run theirs; the scale is ``data.phantom_scale``'s.

Each run's ``split.json`` lists its train, validation (none by default: every
training-fold case trains) and test cases; the report scores each run's last model on
the test cases, which no run trained or chose anything on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from paresseg_jax.atomic import write_text
from paresseg_jax.data.phantom_scale import FULL, SMALL, DemoScale, make_cohort
from paresseg_jax.evaluate import figures, tables
from paresseg_jax.experiments.folds import LIVER_RUN, Stage, run_fold, scaled_config
from paresseg_jax.runs import fold_cases

TUMOR_RUNS = {"resseg": "ResSeg (PV only)", "paresseg": "PA-ResSeg (PV + ART)"}
_CONFIGS = {LIVER_RUN: "liver_resseg", "resseg": "resseg", "paresseg": "paresseg"}  # run -> built-in config


def run_config(run: str, workdir: Path, scale: DemoScale, seed: int = 0) -> ml_collections.ConfigDict:
    """The config of one demo run (the paper's config files, resized)."""
    steps = scale.liver_steps if run == LIVER_RUN else scale.tumor_steps
    return scaled_config(_CONFIGS[run], workdir, scale, steps, seed)


def write_report(workdir: Path, scale: DemoScale, summaries: dict[str, dict], seconds: dict[str, float]) -> Path:
    """``report.md``: the metrics table and per-type DPC of both tumor models, curves, overlays."""
    named = {TUMOR_RUNS[run]: content for run, content in summaries.items()}
    curves = figures.training_curves({name: workdir / run for run, name in {**TUMOR_RUNS, LIVER_RUN: "liver-ResSeg"}.items()},
                                     workdir / "training_curves.png")
    figures.per_type_bars(named, workdir / "per_type_dpc.png")
    liver_dice = [c["liver_dice"] for c in summaries["paresseg"]["cases"]]
    overlays = sorted((workdir / "eval" / "paresseg" / "overlays").glob("*.png"))
    lines = [
        "# paresseg_jax demo report",
        "",
        "Synthetic multi-phase CT (built-in phantom): these numbers validate the pipeline and the",
        "multi-phase mechanism (ART reveals tumors PV hides), not clinical accuracy.",
        "",
        _setup_line(scale, len(liver_dice), len(summaries["paresseg"]["info"]["split"]["validation"])),
        "",
        tables.protocol_table(named),
        "",
        f"Liver stage (liver-ResSeg) Dice on the test cases: mean {100 * np.mean(liver_dice):.2f}%, "
        f"min {100 * np.min(liver_dice):.2f}%.",
        "",
        "## Tumor segmentation (test fold)",
        "",
        tables.metrics_table(named),
        "",
        "## DPC per tumor type (%)",
        "",
        tables.per_type_table(named),
        "",
        *tables.detection_section(named, "test fold"),
        _t_test_line({run: content["cases"] for run, content in summaries.items()}),
        "",
        "![per-type DPC](per_type_dpc.png)",
        "",
        "## Training curves",
        "",
        f"![training curves]({curves.name})",
        "",
        "## Overlays (PA-ResSeg; prediction red, ground truth green)",
        "",
        *[f"![{p.stem}]({p.relative_to(workdir)})" for p in overlays],
        "",
        "## Time per stage (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {s:.0f} |" for stage, s in seconds.items()],
        "",
    ]
    report = workdir / "report.md"
    write_text(report, "\n".join(lines))
    return report


def _setup_line(scale: DemoScale, num_test: int, num_validation: int) -> str:
    """The report's sentence on the cohort, the split, the networks and the cascade."""
    return (
        f"Cohort: {scale.num_cases} cases of {scale.shape[2]}x{scale.shape[1]} px x {scale.shape[0]} slices, "
        f"5 tumor types x 2 scanner profiles; fold 0 of {scale.num_folds} held out as the test set "
        f"({num_test} cases), the other folds train ({num_validation} validation cases; every run's split.json). "
        f"Networks at width {scale.width}, {scale.crop_size}px patches, "
        f"batch {scale.batch_size}; tumor models {scale.tumor_steps} steps, liver model {scale.liver_steps} steps. "
        "Test cases are segmented with the paper's cascade: the liver model's prediction, "
        "dilated 5x5, gates the tumor model."
    )


def _t_test_line(cases: dict[str, list]) -> str:
    """The paired t-test of the two tumor models' per-case Dice, or why it was not computed."""
    try:
        result = tables.paired_t_test(cases["resseg"], cases["paresseg"], "dice")
    except ValueError as error:  # too few held-out cases (a tiny cohort)
        return f"Paired t-test of the per-case Dice not computed: {error}"
    return tables.t_test_line(TUMOR_RUNS["resseg"], TUMOR_RUNS["paresseg"], result)


def run_demo(workdir: str, full: bool = False, seed: int = 0, scale: DemoScale | None = None) -> Path:
    """Run (or continue) every stage in ``workdir``; returns the path of ``report.md``."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    scale = scale or (FULL if full else SMALL)
    write_text(workdir / "demo_scale.json", json.dumps(dataclasses.asdict(scale), indent=1))
    configs = {run: run_config(run, workdir, scale, seed) for run in _CONFIGS}
    seconds = {}

    def stage(name, fn):
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        return result

    stage("synthetic cohort", lambda: make_cohort(workdir, scale, seed))
    stage("preprocessing (registration, window, ROI, BE weights)", lambda: fold_cases(configs["paresseg"]))
    liver = Stage(LIVER_RUN, configs[LIVER_RUN], workdir / LIVER_RUN)
    tumors = [Stage(run, configs[run], workdir / run, {"out_dir": workdir / "eval" / run, "overlays": True,
                                                        "title": label, "run": label}) for run, label in TUMOR_RUNS.items()]
    summaries = run_fold(liver, tumors, timed=stage)
    report = write_report(workdir, scale, summaries, seconds)
    print(f"[demo] report: {report}", flush=True)
    return report
