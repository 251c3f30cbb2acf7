"""Ablation studies on a synthetic cohort: the paper's Table 4 and fusion baselines (DMP, MPF of Table 6) by
default, any rows of one's own (``configs/beyond_the_paper.toml``: new blocks, phase dropout, misregistration).

A study is data (``configs/ablation.toml`` or a TOML file of one's own):
``[[row]]`` tables (a label, a run folder, a config, optional field
overrides, phases to also score without, whether to measure robustness to
misregistration), optional ``compare`` pairs and an optional
``[robustness]`` table, so adding a row touches no Python.

Every row is trained on every fold (or the ``folds`` given) for every seed
(initialisation and data order; the cohort and its folds stay fixed), at a
``DemoScale``, into ``<workdir>/<run>/seed_<s>/fold_<k>`` (a
cross-validation workdir per seed), and scored as ``paresseg-evaluate``
scores a run (:func:`paresseg_jax.evaluate.scoring.score_run`): the fold's
held-out cases, ``config.eval.checkpoint``'s model, through the paper's
cascade with the liver-ResSeg trained on the same folds
(``<workdir>/liver/fold_<k>``, shared by the rows, so they differ only by
the tumor model). Each case is thus a test case exactly once per seed, and
the report (:mod:`paresseg_jax.evaluate.ablation_report`) pairs rows case by case.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Sequence

import jax
import ml_collections

from paresseg_jax import compilation_cache, config_files, demo
from paresseg_jax.atomic import write_text
from paresseg_jax.data.preprocess import resolve_config
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import ablation_report, robustness
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.summary import SUMMARY_FILE, read_summary, write_summary
from paresseg_jax.model_io import SPEC_FILE
from paresseg_jax.train.loop import prepared_cache, train_and_evaluate
from paresseg_jax.workdir import CHECKPOINT_DIR, LAST_MODEL, PERTURBED_DIR
from paresseg_jax.worker_processes import usable_workers

ROWS_FILE = "ablation.toml"  # the built-in study, beside the built-in configs
REPORT_FILE = "ablation.md"
LOG_DIR = "logs"  # with jobs > 1: each training's output, <run>_seed_<s>_fold_<k>.log
_ROW_FIELDS = {"label", "run", "config", "overrides", "without", "robustness"}
_STUDY_FIELDS = {"row", "compare", "robustness"}
_ROBUSTNESS_FIELDS = {"magnitudes_mm", "kinds", "registration"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained model of a study: its report label, run folder, config and config changes."""

    label: str
    run: str
    config: str  # built-in config name or config file path
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted field -> value
    without: tuple[str, ...] = ()  # also scored with these phases absent (models trained with phase dropout)
    robustness: bool = False  # also scored with ART misaligned and from other registrations


@dataclasses.dataclass(frozen=True)
class Study:
    """A study's rows, the entry pairs to test against each other and the robustness conditions."""

    rows: list[Row]
    compare: list[tuple[str, str]]  # entry names: a row's run, or run:condition (e.g. resseg, pd:without_art)
    magnitudes_mm: tuple[float, ...] = (2, 4, 6, 8, 10)  # misalignments applied at test time (0 is the plain score)
    kinds: tuple[str, ...] = robustness.KINDS
    registration: dict = dataclasses.field(default_factory=dict)  # name -> preprocessing changes of the test cases


def read_study(path: str | Path | None = None) -> Study:
    """The study of a TOML file, or a built-in one by name (default: ``ablation``), checked whole."""
    path = Path(path or Path(ROWS_FILE).stem)
    if not path.suffix and len(path.parts) == 1 and not path.exists():
        path = config_files.builtin_dir() / f"{path}.toml"
    try:
        content = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PareSegError(f"cannot read the study: {error}", path=path,
                           fix="give a TOML file of [[row]] tables (label, run, config, overrides)") from None

    def refuse(problem, fix=f"a row has {sorted(_ROW_FIELDS)} (only label, run and config are required)"):
        raise PareSegError(problem, path=path, fix=fix)

    if set(content) - _STUDY_FIELDS:
        refuse(f"unknown top-level entries {sorted(set(content) - _STUDY_FIELDS)}",
               fix=f"a study has {sorted(_STUDY_FIELDS)}")
    rows = []
    for number, table in enumerate(content.get("row", []), 1):
        unknown, missing = set(table) - _ROW_FIELDS, {"label", "run", "config"} - set(table)
        if unknown or missing:
            refuse(f"row {number}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        rows.append(Row(**{**table, "without": tuple(table.get("without", ()))}))
    runs = [row.run for row in rows]
    if not rows or len(set(runs)) < len(runs):
        refuse(f"need rows with distinct run folders, got {runs}")
    if demo.LIVER_RUN in runs:
        refuse(f"run folder {demo.LIVER_RUN!r} holds the cascade's liver-ResSeg", fix="name the row's run otherwise")
    settings = content.get("robustness", {})
    if set(settings) - _ROBUSTNESS_FIELDS:
        refuse(f"[robustness]: unknown fields {sorted(set(settings) - _ROBUSTNESS_FIELDS)}",
               fix=f"[robustness] has {sorted(_ROBUSTNESS_FIELDS)}")
    unknown_kinds = set(settings.get("kinds", ())) - set(robustness.KINDS)
    if unknown_kinds:
        refuse(f"[robustness]: unknown kinds {sorted(unknown_kinds)}", fix=f"choose from {robustness.KINDS}")
    for name, changes in settings.get("registration", {}).items():
        try:
            resolve_config(changes)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            refuse(f"[robustness.registration] {name}: {error}", fix="give preprocessing settings, e.g. "
                   "{ register = false } or { registration = { bspline_iterations = 0 } }")
    study = Study(rows, [], **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    compare = [tuple(pair) for pair in content.get("compare", [[row.run, rows[0].run] for row in rows[1:]])]
    names = set(entry_names(study))
    bad = [pair for pair in compare if len(pair) != 2 or not set(pair) <= names]
    if bad:
        refuse(f"compare: pairs {bad} do not name two of the study's entries",
               fix=f"compare = [[a, b], ...] with a, b among {sorted(names)}")
    return dataclasses.replace(study, compare=compare)


def entry_names(study: Study) -> dict[str, str]:
    """Every scored entry of a study, ``name -> label``: each row followed by its extra conditions."""
    names = {}
    for row in study.rows:
        names[row.run] = row.label
        for condition, label in conditions(study, row).items():
            names[f"{row.run}:{condition}"] = f"{row.label}, {label}"
    return names


def conditions(study: Study, row: Row) -> dict[str, str]:
    """The row's extra scorings, ``condition folder -> label`` (folders as ``paresseg-robustness`` writes them)."""
    found = {robustness.absent_name(row.without): f"without {', '.join(p.upper() for p in row.without)}"} if row.without else {}
    if row.robustness:
        found |= {robustness.condition_name(kind, m): f"ART {kind} {m:g} mm"
                  for m in study.magnitudes_mm if m > 0 for kind in study.kinds}
        found |= {_registration_condition(name): f"registration: {name}" for name in study.registration}
    return found


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, row: str) -> None:
    """Sets each dotted field of ``overrides`` in ``config``; a field the config lacks is an error, not ignored."""
    for key, value in overrides.items():
        *parents, field = key.split(".")
        node = config
        try:
            for part in parents:
                node = node[part]
            if field not in node:
                raise KeyError(field)
            node[field] = tuple(value) if isinstance(node[field], tuple) and isinstance(value, list) else value
        except (KeyError, TypeError, AttributeError) as error:
            raise PareSegError(f"ablation row {row!r}: cannot set {key} = {value!r} ({error})",
                               fix="override an existing config field with a value of its type") from None


def paper_rows() -> dict[str, dict]:
    """The paper's Table 4 and Table 6 rows by model name."""
    published = json.loads(resources.files("paresseg_jax.evaluate").joinpath("paper_tables.json").read_text())
    return {row["model"]: row for row in published["table4_ablation_resseg"] + published["table6_fusion"]}


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
    scale: demo.DemoScale,
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
    study = read_study() if study is None else study
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
    demo.make_cohort(workdir, scale, cohort_seed)
    trainings = [_Training(fold, seeds[0]) for fold in folds]
    trainings += [_Training(fold, seed, row) for fold in folds for seed in seeds for row in chosen]
    print(f"[ablation] {len(chosen)} rows x {len(seeds)} seeds x {len(folds)} folds = "
          f"{len(chosen) * len(seeds) * len(folds)} tumor trainings + {len(folds)} liver-ResSeg "
          f"trainings of {scale.tumor_steps} and {scale.liver_steps} steps, {jobs} at a time"
          + (f" (each one's output in {workdir / LOG_DIR})" if jobs > 1 else ""), flush=True)
    todo = [t for t in trainings if not _done(workdir, scale, study, t, trainings)]
    for config in {json.dumps(resolve_config(c.data.preprocess), sort_keys=True): c
                   for c in _caches(workdir, scale, study, todo)}.values():
        prepared_cache(config)  # here, before the trainings share it
    _run_trainings(workdir, scale, study, todo, len(trainings) - len(todo), len(trainings), jobs)
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


def _config(workdir: Path, scale: demo.DemoScale, training: _Training) -> ml_collections.ConfigDict:
    if training.row is None:
        config = demo.scaled_config("liver_resseg", workdir, scale, scale.liver_steps, training.seed)
    else:
        config = demo.scaled_config(training.row.config, workdir, scale, scale.tumor_steps, training.seed)
        apply_overrides(config, training.row.overrides, training.row.label)
    config.data.fold = training.fold
    config.train.eval_every = config.train.num_steps  # validated once: the study scores the last model
    return config


def _run_dir(workdir: Path, training: _Training) -> Path:
    if training.row is None:
        return workdir / demo.LIVER_RUN / f"fold_{training.fold}"
    return workdir / training.row.run / f"seed_{training.seed}" / f"fold_{training.fold}"


def _done(workdir: Path, scale: demo.DemoScale, study: Study, training: _Training, trainings: list[_Training]) -> bool:
    """A row's model is done once scored under each of its conditions; a liver-ResSeg once trained, or once
    its fold's rows are done (it is not needed again)."""
    if training.row is not None:
        run_dir = _run_dir(workdir, training)
        return all((_scored(run_dir, c) / SUMMARY_FILE).is_file() for c in [None, *conditions(study, training.row)])
    fold_rows = [t for t in trainings if t.row is not None and t.fold == training.fold]
    return _finished(_run_dir(workdir, training), scale.liver_steps) or all(
        _done(workdir, scale, study, t, trainings) for t in fold_rows)


def _finished(workdir: Path, steps: int) -> bool:
    """Whether a training workdir holds its last model and a checkpoint of its final step (nothing left to do)."""
    checkpoints = workdir / CHECKPOINT_DIR
    saved = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []
    return (workdir / LAST_MODEL / SPEC_FILE).is_file() and max(saved, default=-1) >= steps


def _caches(workdir: Path, scale: demo.DemoScale, study: Study, todo: list[_Training]) -> list:
    """The configs whose preprocessed caches ``todo`` reads: the trainings' and the registration variants'."""
    configs = [_config(workdir, scale, t) for t in todo]
    variants = [_registration_variant(c, changes) for c, t in zip(configs, todo)
                if t.row is not None and t.row.robustness for changes in study.registration.values()]
    return configs + variants


def _registration_variant(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
    """``config`` with its cohort preprocessed with ``changes`` (a registration variant of the test cases)."""
    variant = ml_collections.ConfigDict(config.to_dict())
    variant.data.preprocess = resolve_config(changes, base=resolve_config(config.data.preprocess))
    return variant


def _run_trainings(workdir: Path, scale: demo.DemoScale, study: Study, todo: list[_Training], done: int, total: int,
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


def _in_worker(workdir: Path, scale: demo.DemoScale, study: Study, training: _Training) -> None:
    """``_train_and_score`` in a spawned process, its output (progress bars, warnings) in its own log file:
    two trainings' bars on one terminal read as noise, and the study prints each start and end."""
    log = _log_file(workdir, training)
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    _train_and_score(workdir, scale, study, training)


def _log_file(workdir: Path, training: _Training) -> Path:
    return workdir / LOG_DIR / f"{_run_dir(workdir, training).relative_to(workdir).as_posix().replace('/', '_')}.log"


def _start_worker(jax_settings: dict) -> None:
    """A spawned training process: the parent's compilation cache (the folds of a row compile the same steps)."""
    for name, value in jax_settings.items():
        jax.config.update(name, value)


def _train_and_score(workdir: Path, scale: demo.DemoScale, study: Study, training: _Training) -> None:
    """Trains (unless finished) and, for a row, scores the model under each of its conditions; a training stopped
    by a signal stops the study."""
    config, run_dir = _config(workdir, scale, training), _run_dir(workdir, training)
    if not _finished(run_dir, int(config.train.num_steps)):
        result = train_and_evaluate(config, str(run_dir))
        if result.get("stopped_by"):
            raise SystemExit(f"[ablation] stopped by {result['stopped_by']} while training {run_dir}; "
                             "rerun the same command to continue")
    if training.row is None:
        return
    liver_dir = _run_dir(workdir, _Training(training.fold, training.seed))
    score_run(run_dir, liver_workdir=liver_dir, run=training.row.label, reuse=True)  # scored again unless all matches
    _score_conditions(study, training.row, config, run_dir, liver_dir, training.seed)


def _score_conditions(study: Study, row: Row, config, run_dir: Path, liver_dir: Path, seed: int) -> None:
    """The row's extra scorings of one fold's model (each skipped when its summary exists)."""
    def done(condition: str) -> bool:
        return (_scored(run_dir, condition) / SUMMARY_FILE).is_file()

    if row.without and not done(robustness.absent_name(row.without)):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=(), absent=row.without, liver_workdir=liver_dir)
    if not row.robustness:
        return
    magnitudes = [m for m in study.magnitudes_mm if m > 0]
    if not all(done(robustness.condition_name(kind, m)) for m in magnitudes for kind in study.kinds):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=magnitudes, kinds=study.kinds, seed=seed,
                                      liver_workdir=liver_dir)
    for name, changes in study.registration.items():
        if not done(_registration_condition(name)):
            cache_dir = prepared_cache(_registration_variant(config, changes))
            robustness.evaluate_perturbed(run_dir, magnitudes_mm=(0,), kinds=(), cache_dir=cache_dir,
                                          prefix=_registration_prefix(name), liver_workdir=liver_dir)


def _registration_prefix(name: str) -> str:
    """``evaluate_perturbed``'s prefix for the held-out cases registered otherwise (``rigid_``)."""
    return f"{name}_"


def _registration_condition(name: str) -> str:
    """The folder of the held-out cases registered otherwise, scored at 0 mm (``rigid_none``)."""
    return _registration_prefix(name) + robustness.condition_name("", 0)


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
