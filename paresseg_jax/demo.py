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

Each run's ``split.json`` lists its train, validation (none by default: every
training-fold case trains) and test cases; the report scores each run's last model on
the test cases, which no run trained or chose anything on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import ml_collections
import numpy as np
import SimpleITK as sitk

from paresseg_jax import config_files
from paresseg_jax.atomic import write_text
from paresseg_jax.data import phantom
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import figures, tables
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.train.loop import fold_cases, train_unless_finished

log = logging.getLogger(__name__)

LIVER_RUN = "liver"
TUMOR_RUNS = {"resseg": "ResSeg (PV only)", "paresseg": "PA-ResSeg (PV + ART)"}
_CONFIGS = {LIVER_RUN: "liver_resseg", "resseg": "resseg", "paresseg": "paresseg"}  # run -> built-in config


@dataclasses.dataclass(frozen=True)
class DemoScale:
    """How big the demo is: cohort, network width, patches and training length."""

    num_cases: int
    shape: tuple[int, int, int]  # (z, y, x) voxels per case
    width: int
    crop_size: int
    batch_size: int
    tumor_steps: int
    liver_steps: int
    num_folds: int
    worker_count: int


# About 10 minutes on 2 CPU cores (6.7-11 min measured in fresh environments on two VMs).
SMALL = DemoScale(
    num_cases=25, shape=(20, 128, 128), width=8, crop_size=64, batch_size=8,
    tumor_steps=500, liver_steps=150, num_folds=5, worker_count=0,
)
# The paper's widths, patches, batch and a 500-epoch-like schedule: for a GPU.
FULL = DemoScale(
    num_cases=60, shape=(40, 512, 512), width=64, crop_size=224, batch_size=8,
    tumor_steps=40_000, liver_steps=10_000, num_folds=5, worker_count=4,
)


def scaled_config(config: str, workdir: Path, scale: DemoScale, steps: int, seed: int = 0) -> ml_collections.ConfigDict:
    """An experiment config (built-in name or file path) resized to ``scale``, on the cohort in ``workdir``."""
    config = config_files.load(config)
    config.seed = seed
    config.model.width = scale.width
    config.data.cohort_dir = str(workdir / "cohort")
    config.data.cache_root = str(workdir / "cohort_cache")
    config.data.crop_size = scale.crop_size
    config.data.worker_count = scale.worker_count
    config.data.num_folds = scale.num_folds
    config.data.fold = 0
    config.train.batch_size = scale.batch_size
    config.train.num_steps = steps
    config.train.log_every = max(1, steps // 50)
    config.train.eval_every = max(1, steps // 4)
    config.train.checkpoint_every = config.train.eval_every
    config.eval.tile = scale.crop_size
    config.eval.stride = scale.crop_size // 2
    return config


def run_config(run: str, workdir: Path, scale: DemoScale, seed: int = 0) -> ml_collections.ConfigDict:
    """The config of one demo run (the paper's config files, resized)."""
    steps = scale.liver_steps if run == LIVER_RUN else scale.tumor_steps
    return scaled_config(_CONFIGS[run], workdir, scale, steps, seed)


def make_cohort(workdir: Path, scale: DemoScale, seed: int = 0) -> Path:
    """The phantom cohort of ``scale``; one already in ``workdir`` is reused only if it is of that scale."""
    cohort = workdir / "cohort"
    if not (cohort / "manifest.json").is_file():
        phantom.make_cohort(cohort, scale.num_cases, seed=seed, shape=scale.shape, num_folds=scale.num_folds)
        return cohort
    entries = read_cohort(cohort)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(entries[0].phases["pv"]))
    reader.ReadImageInformation()
    found = (len(entries), tuple(reversed(reader.GetSize())))
    if found != (scale.num_cases, tuple(scale.shape)):
        raise PareSegError(f"this workdir's cohort has {found[0]} cases of {found[1]} voxels, not the "
                           f"{scale.num_cases} of {tuple(scale.shape)} asked for", path=cohort,
                           fix="use a new workdir for another scale, or the scale it was made with")
    return cohort


def evaluate_cascade(workdir: Path) -> dict[str, dict]:
    """Each tumor run scored on its test cases through the cascade (the liver run's ROI); ``summary.json`` each."""
    out = {run: workdir / "eval" / run for run in TUMOR_RUNS}
    return {
        run: score_run(workdir / run, liver_workdir=workdir / LIVER_RUN, out_dir=d, overlays=True,
                       title=TUMOR_RUNS[run], run=TUMOR_RUNS[run], reuse=True)
        for run, d in out.items()
    }


def write_report(workdir: Path, scale: DemoScale, summaries: dict[str, dict], seconds: dict[str, float]) -> Path:
    """``report.md``: the metrics table and per-type DPC of both tumor models, curves, overlays."""
    named = {TUMOR_RUNS[run]: content for run, content in summaries.items()}
    curves = figures.training_curves({name: workdir / run for run, name in {**TUMOR_RUNS, LIVER_RUN: "liver-ResSeg"}.items()},
                                     workdir / "training_curves.png")
    figures.per_type_bars(named, workdir / "per_type_dpc.png")
    cases = {run: content["cases"] for run, content in summaries.items()}
    try:
        t_test_line = tables.t_test_line(
            TUMOR_RUNS["resseg"], TUMOR_RUNS["paresseg"], tables.paired_t_test(cases["resseg"], cases["paresseg"], "dice")
        )
    except ValueError as error:  # too few held-out cases (a tiny cohort)
        t_test_line = f"Paired t-test of the per-case Dice not computed: {error}"
    liver_dice = [c["liver_dice"] for c in cases["paresseg"]]
    overlays = sorted((workdir / "eval" / "paresseg" / "overlays").glob("*.png"))
    lines = [
        "# paresseg_jax demo report",
        "",
        "Synthetic multi-phase CT (built-in phantom): these numbers validate the pipeline and the",
        "multi-phase mechanism (ART reveals tumors PV hides), not clinical accuracy.",
        "",
        f"Cohort: {scale.num_cases} cases of {scale.shape[2]}x{scale.shape[1]} px x {scale.shape[0]} slices, "
        f"5 tumor types x 2 scanner profiles; fold 0 of {scale.num_folds} held out as the test set "
        f"({len(liver_dice)} cases), the other folds train "
        f"({len(summaries['paresseg']['info']['split']['validation'])} validation cases; every run's split.json). "
        f"Networks at width {scale.width}, {scale.crop_size}px patches, "
        f"batch {scale.batch_size}; tumor models {scale.tumor_steps} steps, liver model {scale.liver_steps} steps. "
        "Test cases are segmented with the paper's cascade: the liver model's prediction, "
        "dilated 5x5, gates the tumor model.",
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
        "## Lesion detection (test fold; IoU > 0.5 with the touching lesions, %)",
        "",
        tables.detection_table(named),
        "",
        t_test_line,
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
    for run in _CONFIGS:
        stage(f"training {run}", lambda run=run: train_unless_finished(configs[run], workdir / run))
    summaries = stage("cascade inference and scoring", lambda: evaluate_cascade(workdir))
    report = write_report(workdir, scale, summaries, seconds)
    print(f"[demo] report: {report}", flush=True)
    return report
