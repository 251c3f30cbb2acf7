"""The paper's ablation (Table 4) and fusion baselines (DMP, MPF of Table 6) on a synthetic cohort.

The rows are data (``configs/ablation.toml``, or a TOML file of one's own):
a label, a run folder, a config (built-in name or file) and optional field
overrides, so adding a row touches no Python. Each row's config is resized
by a ``DemoScale`` and trained on the same folds of the same phantom cohort,
and scored as ``paresseg-evaluate`` scores a run
(:func:`paresseg_jax.evaluate.scoring.score_run`): the test fold, each run's
``config.eval.checkpoint`` model, through the paper's cascade with one
liver-ResSeg trained on the same folds (so rows differ only by the tumor
model). The tables print next to the paper's numbers
(``evaluate/paper_tables.json``, copied from the paper) and say which split,
checkpoint and ROI they used.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from importlib import resources
from pathlib import Path

import ml_collections

from paresseg_jax import config_files, demo
from paresseg_jax.atomic import write_text
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import tables
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.evaluate.summary import SUMMARY_FILE, read_summary
from paresseg_jax.train.loop import train_and_evaluate

ROWS_FILE = "ablation.toml"  # the built-in rows, beside the built-in configs
_ROW_FIELDS = {"label", "run", "config", "overrides"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained model of the ablation: its report label, run folder, config and config changes."""

    label: str
    run: str
    config: str  # built-in config name or config file path
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted field -> value


def read_rows(path: str | Path | None = None) -> list[Row]:
    """The ``[[row]]`` tables of a TOML file (default: the built-in ``ablation.toml``)."""
    path = Path(path) if path else config_files.builtin_dir() / ROWS_FILE
    try:
        tables = tomllib.loads(path.read_text()).get("row", [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PareSegError(f"cannot read the ablation rows: {error}", path=path,
                           fix="give a TOML file of [[row]] tables (label, run, config, overrides)") from None
    rows = []
    for number, table in enumerate(tables, 1):
        unknown, missing = set(table) - _ROW_FIELDS, {"label", "run", "config"} - set(table)
        if unknown or missing:
            raise PareSegError(f"row {number}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}",
                               path=path, fix=f"a row has {sorted(_ROW_FIELDS)} (overrides optional)")
        rows.append(Row(**table))
    runs = [row.run for row in rows]
    if not rows or len(set(runs)) < len(runs):
        raise PareSegError(f"need rows with distinct run folders, got {runs}", path=path)
    return rows


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


def run_ablation(workdir: str, scale: demo.DemoScale, rows: list[Row] | None = None, runs=None, seed: int = 0) -> str:
    """Train and score ``rows`` (default: the built-in ones), only the ``runs`` named if given, in ``workdir``
    (finished runs are reused); returns the report text."""
    workdir = Path(workdir).absolute()
    rows = read_rows() if rows is None else rows
    unknown = sorted(set(runs or ()) - {row.run for row in rows})
    if unknown:
        raise PareSegError(f"unknown ablation runs {unknown}", fix=f"choose from {[row.run for row in rows]}")
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "ablation_scale.json", json.dumps(dataclasses.asdict(scale), indent=1))
    demo.make_cohort(workdir, scale, seed)
    chosen = [row for row in rows if not runs or row.run in runs]
    if any(row.run == demo.LIVER_RUN for row in rows):
        raise PareSegError(f"run folder {demo.LIVER_RUN!r} holds the cascade's liver-ResSeg", fix="name the row's run otherwise")
    liver_dir = workdir / demo.LIVER_RUN
    if any(not (workdir / "eval" / row.run / SUMMARY_FILE).is_file() for row in chosen):  # a finished one restores
        print("[ablation] the cascade's liver-ResSeg: training", flush=True)
        train_and_evaluate(demo.scaled_config("liver_resseg", workdir, scale, scale.liver_steps, seed), str(liver_dir))
    summaries = {}
    for row in chosen:
        name, run = row.label, row.run
        out = workdir / "eval" / run
        if not (out / SUMMARY_FILE).is_file():
            config = demo.scaled_config(row.config, workdir, scale, scale.tumor_steps, seed)
            apply_overrides(config, row.overrides, name)
            print(f"[ablation] {name}: training {run}", flush=True)
            train_and_evaluate(config, str(workdir / run))
            score_run(workdir / run, liver_workdir=liver_dir, out_dir=out, run=name)
        summaries[name] = read_summary(out)
    report = "\n".join([
        "# Ablation on the synthetic cohort (paper Tables 4 and 6)",
        "",
        f"{scale.num_cases} phantom cases, fold 0 of {scale.num_folds} held out as the test set, validation carved "
        f"from the other folds; width {scale.width}, {scale.crop_size}px patches, batch {scale.batch_size}, "
        f"{scale.tumor_steps} steps per model, liver-ResSeg {scale.liver_steps} steps. Synthetic data: this checks "
        "the mechanism, not clinical accuracy, and the paper's numbers come from 121 real cases.",
        "",
        tables.protocol_table(summaries),
        "",
        tables.paper_comparison_table(summaries, paper_rows()),
        "",
        "## DPC per tumor type (%)",
        "",
        tables.per_type_table(summaries),
        "",
    ])
    write_text(workdir / "ablation.md", report)
    return report
