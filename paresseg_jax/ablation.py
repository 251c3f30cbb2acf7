"""The paper's ablation (Table 4) and fusion baselines (DMP, MPF of Table 6) on a synthetic cohort.

Every row is one config file of ``configs/``, resized by a ``DemoScale`` and
trained on the same folds of the same phantom cohort; each run's last model
segments the held-out fold inside the ground-truth liver ROI (so rows differ
only by the tumor model), and the tables print next to the paper's numbers
(``evaluate/paper_tables.json``, copied from the paper).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from paresseg_jax import demo, model_io
from paresseg_jax.evaluate import tables
from paresseg_jax.evaluate.crossval import evaluate_cases
from paresseg_jax.evaluate.summary import SUMMARY_FILE, read_summary, write_summary
from paresseg_jax.train.loop import train_and_evaluate, training_cases
from paresseg_jax.workdir import LAST_MODEL

# (row name in paper_tables.json, run folder, built-in config); Table 4 then Table 6's fusion baselines.
ROWS = (
    ("single ResSeg (PV)", "resseg", "resseg"),
    ("single ResSeg + intra-PA", "resseg_intra", "resseg_intra"),
    ("MSF-ResSeg (concat)", "msf_resseg", "msf_resseg"),
    ("MSF + intra-PA", "msf_intra", "msf_intra"),
    ("PA-ResSeg (CE)", "paresseg", "paresseg"),
    ("PA-ResSeg + BE-loss", "paresseg_be", "paresseg_be"),
    ("DMP", "dmp_resseg", "dmp_resseg"),
    ("MPF", "mpf_resseg", "mpf_resseg"),
)
RUN_NAMES = tuple(run for _, run, _ in ROWS)


def paper_rows() -> dict[str, dict]:
    """The paper's Table 4 and Table 6 rows by model name."""
    published = json.loads(resources.files("paresseg_jax.evaluate").joinpath("paper_tables.json").read_text())
    return {row["model"]: row for row in published["table4_ablation_resseg"] + published["table6_fusion"]}


def run_ablation(workdir: str, scale: demo.DemoScale, runs=RUN_NAMES, seed: int = 0) -> str:
    """Train and score the chosen rows in ``workdir`` (finished runs are reused); returns the report text."""
    workdir = Path(workdir).absolute()
    unknown = sorted(set(runs) - set(RUN_NAMES))
    if unknown:
        raise ValueError(f"unknown ablation runs {unknown}; choose from {list(RUN_NAMES)}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ablation_scale.json").write_text(json.dumps(dataclasses.asdict(scale), indent=1))
    demo.make_cohort(workdir, scale, seed)
    summaries = {}
    for name, run, config_name in ROWS:
        if run not in runs:
            continue
        out = workdir / "eval" / run
        if not (out / SUMMARY_FILE).is_file():
            config = demo.scaled_config(config_name, workdir, scale, scale.tumor_steps, seed)
            print(f"[ablation] {name}: training {run}", flush=True)
            train_and_evaluate(config, str(workdir / run))
            module, variables, _ = model_io.load_model(workdir / run / LAST_MODEL)
            _, held_out = training_cases(config)
            records = evaluate_cases(module, variables, held_out, config.eval.to_dict())
            write_summary(out, records, run=name, config=config.to_dict())
        summaries[name] = read_summary(out)
    report = "\n".join([
        "# Ablation on the synthetic cohort (paper Tables 4 and 6)",
        "",
        f"{scale.num_cases} phantom cases, fold 0 of {scale.num_folds} held out; width {scale.width}, "
        f"{scale.crop_size}px patches, batch {scale.batch_size}, {scale.tumor_steps} steps per model; "
        "ground-truth liver ROI; last model of each run. Synthetic data: this checks the mechanism, "
        "not clinical accuracy, and the paper's numbers come from 121 real cases.",
        "",
        tables.paper_comparison_table(summaries, paper_rows()),
        "",
        "## DPC per tumor type (%)",
        "",
        tables.per_type_table(summaries),
        "",
    ])
    (workdir / "ablation.md").write_text(report)
    return report
