"""Ablation studies on a synthetic cohort: the paper's Table 4 and fusion baselines (DMP, MPF of Table 6) by
default, any rows of one's own (``configs/beyond_the_paper.toml``: new blocks, phase dropout, misregistration).

The study is a plan (:mod:`paresseg_jax.experiments.ablation_plan`); this
module schedules its trainings, scores them and pools the folds. Every row
is trained on every fold (or the ``folds`` given) for every seed
(initialisation and data order; the cohort and its folds stay fixed), at a
``DemoScale``, into ``<workdir>/<run>/seed_<s>/fold_<k>`` (a
cross-validation workdir per seed), and trained and scored as every fold is
(:mod:`paresseg_jax.experiments.folds`): the fold's held-out cases,
``config.eval.checkpoint``'s model, through the paper's cascade with the
liver-ResSeg trained on the same folds (``<workdir>/liver/fold_<k>``,
shared by the rows, so they differ only by the tumor model). A row counts as
done only when its stored scores' provenance is what scoring would use now.
Each case is thus a test case exactly once per seed, and the report
(:mod:`paresseg_jax.evaluate.ablation_report`) pairs rows case by case.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import ml_collections

from paresseg_jax import compilation_cache, train
from paresseg_jax.atomic import write_text
from paresseg_jax.data.phantom_scale import DemoScale, make_cohort
from paresseg_jax.data.preprocess import resolve_config
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import ablation_report, provenance, robustness, scoring
from paresseg_jax.summary import SUMMARY_FILE, read_summary, write_summary
from paresseg_jax.experiments.ablation_plan import (Row, Study, apply_overrides, conditions, entry_names, paper_rows,
                                                    read_plan, registration_condition, registration_prefix)
from paresseg_jax.experiments.folds import LIVER_RUN, Stage, scaled_config, score_stage, train_stage
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import PERTURBED_DIR
from paresseg_jax.worker_processes import usable_workers

LOG_DIR = "logs"  # with jobs > 1: each training's output, <run>_seed_<s>_fold_<k>.log


@dataclasses.dataclass(frozen=True)
class _Training:
    """One training of a study: a fold's liver-ResSeg (no row), or a row's model of one seed and fold, scored."""

    fold: int
    seed: int
    row: Row | None = None

    def describe(self) -> str:
        return f"liver-ResSeg, fold {self.fold}" if self.row is None else f"{self.row.label}, seed {self.seed}, fold {self.fold}"


def run_ablation(
    workdir: str,
    scale: DemoScale,
    study: Study | None = None,
    runs: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    folds: Sequence[int] | None = None,
    cohort_seed: int = 0,
    jobs: int = 1,
) -> str:
    """Train and score ``study``'s rows (default: the built-in ones; only the ``runs`` named if given) for each
    seed on each fold (default: all) in ``workdir``, ``jobs`` trainings at a time (finished trainings and scorings
    are reused); writes ``<workdir>/ablation.md`` with its figures and returns the report text."""
    workdir = Path(workdir).absolute()
    study = read_plan() if study is None else study
    unknown = sorted(set(runs or ()) - {row.run for row in study.rows})
    if unknown:
        raise PareSegError(f"unknown ablation runs {unknown}", fix=f"choose from {[row.run for row in study.rows]}")
    folds = list(range(scale.num_folds)) if folds is None else sorted({int(k) for k in folds})
    if not folds or not set(folds) <= set(range(scale.num_folds)) or not seeds or len(set(seeds)) < len(seeds):
        raise PareSegError(f"folds {folds} of {scale.num_folds}, seeds {list(seeds)}",
                           fix=f"give folds among 0..{scale.num_folds - 1} and distinct seeds")
    if jobs < 1:
        raise PareSegError(f"jobs {jobs}", fix="give 1 or more trainings to run at a time")
    chosen = [row for row in study.rows if not runs or row.run in runs]
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "ablation_scale.json", json.dumps(dataclasses.asdict(scale), indent=1))
    make_cohort(workdir, scale, cohort_seed)
    trainings = [_Training(fold, seeds[0]) for fold in folds]
    trainings += [_Training(fold, seed, row) for fold in folds for seed in seeds for row in chosen]
    print(f"[ablation] {len(chosen)} rows x {len(seeds)} seeds x {len(folds)} folds = "
          f"{len(chosen) * len(seeds) * len(folds)} tumor trainings + {len(folds)} liver-ResSeg "
          f"trainings of {scale.tumor_steps} and {scale.liver_steps} steps, {jobs} at a time"
          + (f" (each one's output in {workdir / LOG_DIR})" if jobs > 1 else ""), flush=True)
    todo = _todo(workdir, scale, study, trainings)
    for config in {json.dumps(resolve_config(c.data.preprocess), sort_keys=True): c
                   for c in _caches(workdir, scale, study, todo)}.values():
        prepared_cache(config)  # here, before the trainings share it
    _run_trainings(workdir, scale, study, todo, len(trainings) - len(todo), len(trainings), jobs)
    return _write_report(workdir, scale, study, chosen, seeds, folds)


def _write_report(workdir: Path, scale: DemoScale, study: Study, chosen: list[Row], seeds: Sequence[int],
                  folds: list[int]) -> str:
    """Pools each chosen row's folds per seed and writes ``ablation.md`` (the rows side by side, per-case tests,
    robustness curves, the paper's numbers); returns its text."""
    per_seed = {}
    for seed in seeds:
        for row in chosen:
            for name, summary in _pool_folds(study, row, workdir / row.run / f"seed_{seed}", folds, scale.num_folds, seed).items():
                per_seed.setdefault(name, []).append(summary)
    labels = {name: label for name, label in entry_names(study).items() if name in per_seed}
    curves = {row.label: {kind: [(0.0, row.run)] + [(m, f"{row.run}:{robustness.condition_name(kind, m)}")
                                                    for m in study.magnitudes_mm if m > 0]
                          for kind in study.kinds} for row in chosen if row.robustness}
    description = (
        f"{scale.num_cases} phantom cases ({scale.shape[2]} x {scale.shape[1]} px x {scale.shape[0]} slices); folds "
        f"{', '.join(map(str, folds))} of {scale.num_folds} each held out in turn, the other folds "
        f"training; seeds {', '.join(map(str, seeds))} (initialisation and data order); width {scale.width}, "
        f"{scale.crop_size} px patches, batch {scale.batch_size}, {scale.tumor_steps} steps per model, liver-ResSeg "
        f"{scale.liver_steps} steps per fold. Each case is scored once per seed, by the model that did not train on "
        "it. Synthetic data: this checks mechanisms, not clinical accuracy."
    )
    compare = [(a, b) for a, b in study.compare if a in labels and b in labels]
    return ablation_report.write(workdir, "Ablation on the synthetic cohort", description, labels, per_seed, compare,
                              curves, paper_rows())


def _stage(workdir: Path, scale: DemoScale, training: _Training) -> Stage:
    """The training's config (its row's config at ``scale``, overridden) and workdir, as a fold's stage."""
    if training.row is None:
        config = scaled_config("liver_resseg", workdir, scale, scale.liver_steps, training.seed)
    else:
        config = scaled_config(training.row.config, workdir, scale, scale.tumor_steps, training.seed)
        apply_overrides(config, training.row.overrides, training.row.label)
    config.data.fold = training.fold
    config.train.eval_every = config.train.num_steps  # validated once: the study scores the last model
    name = LIVER_RUN if training.row is None else training.row.run
    return Stage(name, config, workdir / _run_folder(training), {} if training.row is None else {"run": training.row.label})


def _run_folder(training: _Training) -> str:
    """The training's workdir in the study's: ``liver/fold_<k>`` or ``<run>/seed_<s>/fold_<k>``."""
    if training.row is None:
        return f"{LIVER_RUN}/fold_{training.fold}"
    return f"{training.row.run}/seed_{training.seed}/fold_{training.fold}"


def _liver(workdir: Path, scale: DemoScale, training: _Training) -> Stage:
    """The liver-ResSeg stage of ``training``'s fold."""
    return _stage(workdir, scale, _Training(training.fold, training.seed))


def _todo(workdir: Path, scale: DemoScale, study: Study, trainings: list[_Training]) -> list[_Training]:
    """The trainings left, in order: a row's model unless :func:`_row_done`; a fold's liver-ResSeg unless it is
    trained, or its fold's rows are all done (it is not needed again)."""
    rows_left = [t for t in trainings if t.row is not None and not _row_done(workdir, scale, study, t)]

    def liver_left(training: _Training) -> bool:
        stage = _stage(workdir, scale, training)
        return any(t.fold == training.fold for t in rows_left) and not train.is_finished(stage.config, stage.workdir)

    return [t for t in trainings if (t in rows_left if t.row is not None else liver_left(t))]


def _row_done(workdir: Path, scale: DemoScale, study: Study, training: _Training) -> bool:
    """Whether a row's model is trained and scored under each of its conditions, its plain score's provenance
    what scoring would use now (the conditions are scored again with it)."""
    stage = _stage(workdir, scale, training)
    scored = [_scored(stage.workdir, c) / SUMMARY_FILE for c in [None, *conditions(study, training.row)]]
    if not (train.is_finished(stage.config, stage.workdir) and all(path.is_file() for path in scored)):
        return False
    try:
        return scoring.current_summary(stage.workdir, liver_workdir=_liver(workdir, scale, training).workdir) is not None
    except PareSegError:  # e.g. its liver run is gone: not done
        return False


def _caches(workdir: Path, scale: DemoScale, study: Study, todo: list[_Training]) -> list:
    """The configs whose preprocessed caches ``todo`` reads: the trainings' and the registration variants'."""
    configs = [_stage(workdir, scale, t).config for t in todo]
    variants = [_registration_variant(c, changes) for c, t in zip(configs, todo)
                if t.row is not None and t.row.robustness for changes in study.registration.values()]
    return configs + variants


def _registration_variant(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
    """``config`` with its cohort preprocessed with ``changes`` (a registration variant of the test cases)."""
    variant = ml_collections.ConfigDict(config.to_dict())
    variant.data.preprocess = resolve_config(changes, base=resolve_config(config.data.preprocess))
    return variant


def _run_trainings(workdir: Path, scale: DemoScale, study: Study, todo: list[_Training], done: int, total: int,
                   jobs: int) -> None:
    """Runs ``todo`` here (``jobs`` 1) or ``jobs`` at a time in spawned processes (one per training, so memory is
    returned; output in ``<workdir>/logs``), a row's model only once its fold's liver-ResSeg is trained; prints
    each start and end and the time left, extrapolated from the training steps done."""
    def steps(training: _Training) -> int:
        return scale.liver_steps if training.row is None else scale.tumor_steps

    start, steps_done, steps_total = time.perf_counter(), 0, sum(map(steps, todo))

    def started(training: _Training) -> None:
        nonlocal done
        done += 1
        print(f"[ablation] {done}/{total} {training.describe()}", flush=True)

    def finished(training: _Training) -> None:
        nonlocal steps_done
        steps_done += steps(training)
        minutes = (time.perf_counter() - start) / 60
        left = minutes / steps_done * (steps_total - steps_done)
        print(f"[ablation] done: {training.describe()}; {minutes:.1f} min so far, about {left:.0f} min left", flush=True)

    if usable_workers(jobs, "the ablation's trainings", 1) == 1:
        for training in todo:
            started(training)
            _train_and_score(workdir, scale, study, training)
            finished(training)
        return
    settings = {name: getattr(jax.config, name) for name in compilation_cache.SETTINGS}
    pending, running = list(todo), {}
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1,
        initializer=_start_worker, initargs=(settings,),
    ) as pool:
        try:
            while pending or running:
                livers = {t.fold for t in pending + list(running.values()) if t.row is None}
                while len(running) < jobs:
                    ready = next((t for t in pending if t.row is None or t.fold not in livers), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    started(ready)
                    running[pool.submit(_in_worker, workdir, scale, study, ready)] = ready
                finished_now, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished_now:
                    training = running.pop(future)
                    if future.exception() is not None:
                        print(f"[ablation] failed: {training.describe()}; its output: {_log_file(workdir, training)}",
                              file=sys.stderr, flush=True)
                    future.result()
                    finished(training)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the running trainings stop at a checkpoint on a signal
            raise


def _in_worker(workdir: Path, scale: DemoScale, study: Study, training: _Training) -> None:
    """``_train_and_score`` in a spawned process, its output (progress bars, warnings) in its own log file:
    two trainings' bars on one terminal read as noise, and the study prints each start and end."""
    log = _log_file(workdir, training)
    log.parent.mkdir(exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    _train_and_score(workdir, scale, study, training)


def _log_file(workdir: Path, training: _Training) -> Path:
    return workdir / LOG_DIR / f"{_run_folder(training).replace('/', '_')}.log"


def _start_worker(jax_settings: dict) -> None:
    """A spawned training process: the parent's compilation cache (the folds of a row compile the same steps)."""
    for name, value in jax_settings.items():
        jax.config.update(name, value)


def _train_and_score(workdir: Path, scale: DemoScale, study: Study, training: _Training) -> None:
    """Trains (unless finished) and, for a row, scores the model under each of its conditions; a training stopped
    by a signal stops the study. A row's conditions are scored again whenever its plain score is."""
    stage = _stage(workdir, scale, training)
    train_stage(stage)
    if training.row is None:
        return
    liver = _liver(workdir, scale, training)
    before = provenance.stored(stage.workdir)
    summary = score_stage(stage, liver)
    rescored = before is None or before["info"].get(provenance.KEY) != summary["info"].get(provenance.KEY)
    _score_conditions(study, training.row, stage, liver.workdir, training.seed, rescored)


def _score_conditions(study: Study, row: Row, stage: Stage, liver_dir: Path, seed: int, rescore: bool) -> None:
    """The row's extra scorings of one fold's model (each skipped when its summary exists, unless ``rescore``)."""
    run_dir = stage.workdir

    def done(condition: str) -> bool:
        return not rescore and (_scored(run_dir, condition) / SUMMARY_FILE).is_file()

    if row.without and not done(robustness.absent_name(row.without)):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=(), absent=row.without, liver_workdir=liver_dir)
    if not row.robustness:
        return
    magnitudes = [m for m in study.magnitudes_mm if m > 0]
    if not all(done(robustness.condition_name(kind, m)) for m in magnitudes for kind in study.kinds):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=magnitudes, kinds=study.kinds, seed=seed,
                                      liver_workdir=liver_dir)
    for name, changes in study.registration.items():
        if not done(registration_condition(name)):
            cache_dir = prepared_cache(_registration_variant(stage.config, changes))
            robustness.evaluate_perturbed(run_dir, magnitudes_mm=(0,), kinds=(), cache_dir=cache_dir,
                                          prefix=registration_prefix(name), liver_workdir=liver_dir)


def _pool_folds(study: Study, row: Row, seed_dir: Path, folds: list[int], num_folds: int, seed: int) -> dict:
    """Each entry of ``row`` for one seed: its folds' records pooled into ``<seed_dir>[/perturbed/<c>]/summary.json``
    (a cross-validation summary, readable by ``paresseg-evaluate --run``); returns ``{(entry, seed): summary}``."""
    pooled = {}
    for condition in [None, *conditions(study, row)]:
        parts = [read_summary(_scored(seed_dir / f"fold_{k}", condition)) for k in folds]
        kept = ("checkpoint", "roi", "extent", "mode", "threshold", "cache_dir", "absent", "misalignment",
                "misalignment_mm", "phase")
        out = _scored(seed_dir, condition)
        records = [case for part in parts for case in part["cases"]]  # each with the fold it was scored in
        write_summary(out, records, run=row.label, seed=seed, folds=folds,
                      num_folds=num_folds, **{k: v for k, v in parts[0]["info"].items() if k in kept})
        pooled[f"{row.run}:{condition}" if condition else row.run] = read_summary(out)
    return pooled


def _scored(run_dir: Path, condition: str | None) -> Path:
    """Where a run's (or a seed's pooled) scores of a condition are: the run itself, or ``perturbed/<condition>``."""
    return run_dir / PERTURBED_DIR / condition if condition else run_dir
