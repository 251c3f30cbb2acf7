"""An ablation study's plan: the TOML schema, its rows and conditions, and the config changes a row makes.

A study is data (``configs/ablation.toml``, ``configs/beyond_the_paper.toml``
or a TOML file of one's own): ``[[row]]`` tables (a label, a run folder, a
config, optional field overrides, phases to also score without, whether to
measure robustness to misregistration), optional ``compare`` pairs and an
optional ``[robustness]`` table, so adding a row touches no Python.
:func:`read_plan` reads and checks one whole; :mod:`paresseg_jax.experiments.ablation` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from importlib import resources
from pathlib import Path

import ml_collections

from paresseg_jax import config_files
from paresseg_jax.data.preprocess import resolve_config
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import robustness
from paresseg_jax.experiments.folds import LIVER_RUN

ROWS_FILE = "ablation.toml"  # the built-in study, beside the built-in configs
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


def read_plan(path: str | Path | None = None) -> Study:
    """The study of a TOML file, or a built-in one by name (default: ``ablation``), checked whole."""
    path = Path(path or Path(ROWS_FILE).stem)
    if not path.suffix and len(path.parts) == 1 and not path.exists():
        path = config_files.builtin_dir() / f"{path}.toml"
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
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
    if LIVER_RUN in runs:
        refuse(f"run folder {LIVER_RUN!r} holds the cascade's liver-ResSeg", fix="name the row's run otherwise")
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
        found |= {registration_condition(name): f"registration: {name}" for name in study.registration}
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
    paper_file = resources.files("paresseg_jax.evaluate").joinpath("paper_tables.json")
    published = json.loads(paper_file.read_text(encoding="utf-8"))
    return {row["model"]: row for row in published["table4_ablation_resseg"] + published["table6_fusion"]}


def registration_prefix(name: str) -> str:
    """``evaluate_perturbed``'s prefix for the held-out cases registered otherwise (``rigid_``)."""
    return f"{name}_"


def registration_condition(name: str) -> str:
    """The folder of the held-out cases registered otherwise, scored at 0 mm (``rigid_none``)."""
    return registration_prefix(name) + robustness.condition_name("", 0)
