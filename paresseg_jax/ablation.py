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

import dataclasses
import json
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Sequence

import ml_collections

from paresseg_jax import config_files, demo
from paresseg_jax.atomic import write_text
from paresseg_jax.data.preprocess import preprocess_cohort, resolve_config
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import ablation_report, robustness
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.evaluate.summary import SUMMARY_FILE, read_summary, write_summary
from paresseg_jax.model_io import SPEC_FILE
from paresseg_jax.train.loop import train_and_evaluate
from paresseg_jax.workdir import CHECKPOINT_DIR, LAST_MODEL, PERTURBED_DIR

ROWS_FILE = "ablation.toml"  # the built-in study, beside the built-in configs
REPORT_FILE = "ablation.md"
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
    found = {f"without_{'_'.join(row.without)}": f"without {', '.join(p.upper() for p in row.without)}"} if row.without else {}
    if row.robustness:
        found |= {f"{kind}_{m:g}mm": f"ART {kind} {m:g} mm" for m in study.magnitudes_mm if m > 0 for kind in study.kinds}
        found |= {f"{name}_none": f"registration: {name}" for name in study.registration}
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


class _Progress:
    """Counts trainings, stops the study when one was interrupted, and prints the time left (extrapolated from
    the trainings this process ran)."""

    def __init__(self, total: int):
        self.total, self.done, self.trained, self.seconds = total, 0, 0, 0.0

    def train(self, config, workdir: Path, what: str) -> None:
        if _finished(workdir, int(config.train.num_steps)):
            return self.skip()
        print(f"[ablation] {self.done + 1}/{self.total} {what}", flush=True)
        start = time.perf_counter()
        result = train_and_evaluate(config, str(workdir))
        if result.get("stopped_by"):
            raise SystemExit(f"[ablation] stopped by {result['stopped_by']} while training {workdir}; "
                             "rerun the same command to continue")
        self.done, self.trained, self.seconds = self.done + 1, self.trained + 1, self.seconds + time.perf_counter() - start
        left = self.seconds / self.trained * (self.total - self.done) / 60
        print(f"[ablation] {self.seconds / 60:.1f} min of training so far, about {left:.0f} min left", flush=True)

    def skip(self) -> None:
        self.done += 1


def _finished(workdir: Path, steps: int) -> bool:
    """Whether a training workdir holds its last model and a checkpoint of its final step (nothing left to do)."""
    checkpoints = workdir / CHECKPOINT_DIR
    saved = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []
    return (workdir / LAST_MODEL / SPEC_FILE).is_file() and max(saved, default=-1) >= steps


def run_ablation(
    workdir: str,
    scale: demo.DemoScale,
    study: Study | None = None,
    runs: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    folds: Sequence[int] | None = None,
    cohort_seed: int = 0,
) -> str:
    """Train and score ``study``'s rows (default: the built-in ones; only the ``runs`` named if given) for each
    seed on each fold (default: all) in ``workdir`` (finished trainings and scorings are reused); writes
    ``<workdir>/ablation.md`` with its figures and returns the report text."""
    workdir = Path(workdir).absolute()
    study = read_study() if study is None else study
    unknown = sorted(set(runs or ()) - {row.run for row in study.rows})
    if unknown:
        raise PareSegError(f"unknown ablation runs {unknown}", fix=f"choose from {[row.run for row in study.rows]}")
    folds = list(range(scale.num_folds)) if folds is None else sorted({int(k) for k in folds})
    if not folds or not set(folds) <= set(range(scale.num_folds)) or not seeds or len(set(seeds)) < len(seeds):
        raise PareSegError(f"folds {folds} of {scale.num_folds}, seeds {list(seeds)}",
                           fix=f"give folds among 0..{scale.num_folds - 1} and distinct seeds")
    chosen = [row for row in study.rows if not runs or row.run in runs]
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "ablation_scale.json", json.dumps(dataclasses.asdict(scale), indent=1))
    demo.make_cohort(workdir, scale, cohort_seed)
    progress = _Progress(len(folds) * (1 + len(seeds) * len(chosen)))
    print(f"[ablation] {len(chosen)} rows x {len(seeds)} seeds x {len(folds)} folds = "
          f"{len(chosen) * len(seeds) * len(folds)} tumor trainings + {len(folds)} liver-ResSeg "
          f"trainings of {scale.tumor_steps} and {scale.liver_steps} steps", flush=True)
    for fold in folds:
        liver_dir = workdir / demo.LIVER_RUN / f"fold_{fold}"
        run_dirs = {(seed, row.run): workdir / row.run / f"seed_{seed}" / f"fold_{fold}" for seed in seeds for row in chosen}
        if all((d / SUMMARY_FILE).is_file() for d in run_dirs.values()):
            progress.skip()  # every row of the fold is scored: the liver model is not needed again
        else:
            liver = demo.scaled_config("liver_resseg", workdir, scale, scale.liver_steps, seeds[0])
            liver.data.fold = fold
            progress.train(liver, liver_dir, f"liver-ResSeg, fold {fold}")
        for seed in seeds:
            for row in chosen:
                config = demo.scaled_config(row.config, workdir, scale, scale.tumor_steps, seed)
                apply_overrides(config, row.overrides, row.label)
                config.data.fold = fold
                run_dir = run_dirs[seed, row.run]
                if (run_dir / SUMMARY_FILE).is_file():
                    progress.skip()
                else:
                    progress.train(config, run_dir, f"{row.label}, seed {seed}, fold {fold}")
                    score_run(run_dir, liver_workdir=liver_dir, run=row.label)
                _score_conditions(study, row, config, run_dir, liver_dir, seed)
    per_seed = {}
    for seed in seeds:
        for row in chosen:
            for name, summary in _pool_folds(study, row, workdir / row.run / f"seed_{seed}", folds, scale.num_folds, seed).items():
                per_seed.setdefault(name, []).append(summary)
    labels = {name: label for name, label in entry_names(study).items() if name in per_seed}
    curves = {row.label: {kind: [(0.0, row.run)] + [(m, f"{row.run}:{kind}_{m:g}mm") for m in study.magnitudes_mm if m > 0]
                          for kind in study.kinds} for row in chosen if row.robustness}
    description = (
        f"{scale.num_cases} phantom cases ({scale.shape[2]} x {scale.shape[1]} px x {scale.shape[0]} slices); folds "
        f"{', '.join(map(str, folds))} of {scale.num_folds} each held out in turn, validation carved from the other "
        f"folds; seeds {', '.join(map(str, seeds))} (initialisation and data order); width {scale.width}, "
        f"{scale.crop_size} px patches, batch {scale.batch_size}, {scale.tumor_steps} steps per model, liver-ResSeg "
        f"{scale.liver_steps} steps per fold. Each case is scored once per seed, by the model that did not train on "
        "it. Synthetic data: this checks mechanisms, not clinical accuracy."
    )
    compare = [(a, b) for a, b in study.compare if a in labels and b in labels]
    return ablation_report.write(workdir, "Ablation on the synthetic cohort", description, labels, per_seed, compare,
                              curves, paper_rows())


def _score_conditions(study: Study, row: Row, config, run_dir: Path, liver_dir: Path, seed: int) -> None:
    """The row's extra scorings of one fold's model (each skipped when its summary exists)."""
    def done(condition: str) -> bool:
        return (_scored(run_dir, condition) / SUMMARY_FILE).is_file()

    if row.without and not done(f"without_{'_'.join(row.without)}"):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=(), absent=row.without, liver_workdir=liver_dir)
    if not row.robustness:
        return
    magnitudes = [m for m in study.magnitudes_mm if m > 0]
    if not all(done(f"{kind}_{m:g}mm") for m in magnitudes for kind in study.kinds):
        robustness.evaluate_perturbed(run_dir, magnitudes_mm=magnitudes, kinds=study.kinds, seed=seed,
                                      liver_workdir=liver_dir)
    for name, changes in study.registration.items():
        if not done(f"{name}_none"):
            options = config.data.get("preprocess")
            options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else dict(options or {})
            cache_dir = preprocess_cohort(config.data.cohort_dir, config.data.cache_root,
                                          _merged(options, changes), workers=config.data.get("preprocess_workers", 0))
            robustness.evaluate_perturbed(run_dir, magnitudes_mm=(0,), kinds=(), cache_dir=cache_dir,
                                          prefix=f"{name}_", liver_workdir=liver_dir)


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _pool_folds(study: Study, row: Row, seed_dir: Path, folds: list[int], num_folds: int, seed: int) -> dict:
    """Each entry of ``row`` for one seed: its folds' records pooled into ``<seed_dir>[/perturbed/<c>]/summary.json``
    (a cross-validation summary, readable by ``paresseg-evaluate --run``); returns ``{(entry, seed): summary}``."""
    pooled = {}
    for condition in [None, *conditions(study, row)]:
        parts = [read_summary(_scored(seed_dir / f"fold_{k}", condition)) for k in folds]
        kept = ("checkpoint", "roi", "extent", "mode", "threshold", "cache_dir", "absent", "misalignment",
                "misalignment_mm", "phase")
        out = _scored(seed_dir, condition)
        records = [{"fold": k, **c} for k, part in zip(folds, parts) for c in part["cases"]]  # each with its fold
        write_summary(out, records, run=row.label, seed=seed, folds=folds,
                      num_folds=num_folds, **{k: v for k, v in parts[0]["info"].items() if k in kept})
        pooled[f"{row.run}:{condition}" if condition else row.run] = read_summary(out)
    return pooled


def _scored(run_dir: Path, condition: str | None) -> Path:
    """Where a run's (or a seed's pooled) scores of a condition are: the run itself, or ``perturbed/<condition>``."""
    return run_dir / PERTURBED_DIR / condition if condition else run_dir
