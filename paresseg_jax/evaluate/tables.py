"""The paper's tables from ``summary.json`` contents, and a paired t-test between runs.

Tables are Markdown, one row per run, in the layouts of the paper: the
metrics table (Tables 4-7, 10: DPC, DG, VOE, RVD, TPR, TNR, ACC in percent,
plus HD95/ASSD in mm), DPC per tumor type (Tables 8 and 11) and marginal vs
middle slices (Table 12); beside them, lesion detection by size.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from paresseg_jax.lesion_metrics import IOU_THRESHOLD

PERCENT_COLUMNS = ("dpc", "dg", "voe", "rvd", "tpr", "tnr", "acc")
MM_COLUMNS = ("hd95", "assd")
SLICE_COLUMNS = ("dpc", "voe", "rvd", "tpr", "tnr", "acc")
SLICE_ROWS = {"marginal": "marginal", "middle": "middle", "tumor": "all tumor"}  # group -> row label


def metrics_table(runs: Mapping[str, Mapping]) -> str:
    """Table 7 layout: one row per run (``name -> summary.json content``)."""
    header = ["run", "cases"] + [c.upper() for c in PERCENT_COLUMNS] + ["HD95 (mm)", "ASSD (mm)"]
    rows = []
    for name, content in runs.items():
        overall = content["summary"]["all"]
        rows.append(
            [name, str(overall["n_cases"])]
            + [_percent(overall.get(c)) for c in PERCENT_COLUMNS]
            + [_number(overall.get(c)) for c in MM_COLUMNS]
        )
    return markdown(header, rows)


PROTOCOL_COLUMNS = ("checkpoint", "roi", "extent", "mode", "threshold")


def protocol_table(runs: Mapping[str, Mapping]) -> str:
    """How each run's numbers were made (``summary.json`` info): its test fold, the model scored, the ROI
    (the paper's cascade or the ground-truth-liver oracle), the extent computed and the threshold."""
    header = ["run", "test cases"] + list(PROTOCOL_COLUMNS)
    rows = []
    for name, content in runs.items():
        info = content.get("info", {})
        split = info.get("split")
        folds = info.get("folds")
        tested = (f"fold {split['fold']} of {split['num_folds']} ({len(split['test'])})" if split
                  else f"folds {', '.join(map(str, folds))} of {info.get('num_folds')}" if folds else "-")
        rows.append([name, tested] + [str(info.get(c, "-")) for c in PROTOCOL_COLUMNS])
    return markdown(header, rows)


def per_type_table(runs: Mapping[str, Mapping]) -> str:
    """Tables 8/11 layout: DPC (%) per tumor type and over all cases, one row per run."""
    types = sorted({t for content in runs.values() for t in content["summary"]["per_type"]})
    header = ["run"] + [f"{t} (n)" for t in types] + ["All"]
    rows = []
    for name, content in runs.items():
        per_type = content["summary"]["per_type"]
        cells = [
            f"{_percent(per_type[t]['dpc'])} ({per_type[t]['n_cases']})" if t in per_type else "-" for t in types
        ]
        rows.append([name] + cells + [_percent(content["summary"]["all"]["dpc"])])
    return markdown(header, rows)


def slice_table(runs: Mapping[str, Mapping]) -> str:
    """Table 12 layout: metrics (%) on marginal, middle and all tumor slices, per run.

    Each case is scored on the whole slices of a group (see
    :func:`paresseg_jax.summary.slice_groups`) and the cases averaged.
    """
    header = ["slices", "run", "cases"] + [c.upper() for c in SLICE_COLUMNS]
    rows = []
    for group, label in SLICE_ROWS.items():
        for name, content in runs.items():
            found = content["summary"]["slices"].get(group)
            if found is None:
                rows.append([label, name, "0"] + ["-"] * len(SLICE_COLUMNS))
            else:
                rows.append([label, name, str(found["n_cases"])] + [_percent(found.get(c)) for c in SLICE_COLUMNS])
    return markdown(header, rows)


DETECTION_ROWS = {"all": "all", "<10mm": "< 10 mm", "10-20mm": "10-20 mm", ">20mm": "> 20 mm"}  # size -> label


def detection_table(runs: Mapping[str, Mapping]) -> str:
    """Lesion detection per run and lesion size (``paresseg_jax.lesion_metrics``): lesions counted over the
    scored cases, recall, precision, F1 and mean per-lesion Dice in %. Runs scored before lesions were
    matched show '-'."""
    header = ["size", "run", "lesions", "detected", "predicted", "true", "recall", "precision", "F1", "lesion Dice"]
    rows = []
    for size, label in DETECTION_ROWS.items():
        for name, content in runs.items():
            found = content["summary"].get("detection", {}).get(size)
            if found is None:
                rows.append([label, name] + ["-"] * (len(header) - 2))
                continue
            counts = [str(found[k]) for k in ("n_reference", "detected", "n_predicted", "true")]
            rows.append([label, name] + counts
                        + [_percent(found[k]) for k in ("recall", "precision", "f1", "lesion_dice")])
    return markdown(header, rows)


def detection_section(runs: Mapping[str, Mapping], cases: str) -> list[str]:
    """The "Lesion detection" section of the demo's and the ablation's reports, one heading and table for both
    (``cases``: whose lesions are counted), as Markdown lines."""
    return [f"## Lesion detection ({cases}; IoU > {IOU_THRESHOLD:g} with the touching lesions, %)", "",
            detection_table(runs), ""]


def paper_comparison_table(runs: Mapping[str, Mapping], paper: Mapping[str, Mapping]) -> str:
    """Our DPC/DG/VOE/RVD (%) beside the paper's for the same rows (``name -> paper_tables.json row``)."""
    columns = ("dpc", "dg", "voe", "rvd")
    header = ["model"] + [f"{c.upper()} ours" for c in columns] + [f"{c.upper()} paper" for c in columns]
    rows = []
    for name, content in runs.items():
        overall = content["summary"]["all"]
        published = paper.get(name, {})
        rows.append(
            [name]
            + [_percent(overall.get(c)) for c in columns]
            + [f"{published[c]:.2f}" if c in published else "-" for c in columns]
        )
    return markdown(header, rows)


def paired_t_test(cases_a: Sequence[Mapping], cases_b: Sequence[Mapping], metric: str = "dice") -> dict:
    """Two-sided paired t-test of a per-case metric between two runs on the same cases.

    Cases are matched by ``case_id``; cases where either run's value is
    undefined (None) are left out and counted, and so are cases without
    metrics (no ground truth). Needs at least two pairs.
    """
    a = {c["case_id"]: c["metrics"][metric] if "metrics" in c else None for c in cases_a}
    b = {c["case_id"]: c["metrics"][metric] if "metrics" in c else None for c in cases_b}
    common = sorted(set(a) & set(b))
    pairs = [(a[k], b[k]) for k in common if a[k] is not None and b[k] is not None]
    if len(pairs) < 2:
        raise ValueError(
            f"a paired t-test on {metric!r} needs at least 2 cases defined in both runs; the runs share "
            f"{len(common)} case ids and {len(pairs)} defined pairs (are they evaluated on the same cohort?)"
        )
    x, y = np.array(pairs, np.float64).T
    result = stats.ttest_rel(x, y)
    return {
        "metric": metric,
        "n": len(pairs),
        "left_out": len(common) - len(pairs),
        "only_in_one_run": len(set(a) ^ set(b)),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_difference": float((x - y).mean()),
        "t": _finite(result.statistic),
        "p": _finite(result.pvalue),
    }


def t_test_line(name_a: str, name_b: str, result: Mapping) -> str:
    """One line of text describing :func:`paired_t_test`'s result."""
    t = "undefined (identical differences)" if result["t"] is None else f"{result['t']:.3f}"
    p = "-" if result["p"] is None else f"{result['p']:.4g}"
    return (
        f"paired t-test on {result['metric']} ({result['n']} cases): {name_a} {result['mean_a']:.4f} vs "
        f"{name_b} {result['mean_b']:.4f}, mean difference {result['mean_difference']:+.4f}, t = {t}, p = {p}"
    )


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _percent(value) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
