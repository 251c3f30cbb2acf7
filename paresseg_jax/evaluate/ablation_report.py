"""An ablation study's report: each entry's DPC as mean +- sd over seeds, lesion detection by size (the demo's
table, lesions of every seed's cases pooled), per-case paired tests between named entries, and figures (DPC per
entry with its spread, per tumor type, against ART misalignment).

The unit of the paired tests is the case: every case of the cohort is a test
case once per seed (the held-out fold of one training), so an entry's value
for a case is its Dice averaged over the seeds, and two entries are compared
on the cases both scored. Both a paired t-test and the Wilcoxon signed-rank
test (no normality assumed) are given, with Benjamini-Hochberg q-values over
all the study's comparisons, since a study makes several.

Zero differences are many (both models at Dice 0 on a case), so the
Wilcoxon test handles them explicitly, by ``zsplit``: a zero keeps its rank,
split half to each sign, so every compared case counts in n and a tie
counts as no evidence either way (scipy's default drops zeros, testing
fewer cases than the t-test beside it). With zeros no exact distribution
applies: p always comes from the normal approximation (``method='approx'``,
no continuity correction), the same on every scipy of setup.cfg's range.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from paresseg_jax.atomic import write_text
from paresseg_jax.evaluate import figures, tables
from paresseg_jax.summary import summarize_records

SPREAD_FIGURE = "dpc_per_entry.png"
PER_TYPE_FIGURE = "dpc_per_type.png"
CURVES_FIGURE = "dpc_vs_misalignment.png"


def seed_statistics(per_seed: Sequence[Mapping]) -> dict:
    """An entry's DPC per seed (the mean over all its test cases), their mean and sd (None for one seed), and
    the range of its per-fold DPCs over every seed; ``per_seed``: one pooled ``summary.json`` content per seed."""
    dpc = [content["summary"]["all"]["dpc"] for content in per_seed]
    folds = defaultdict(list)
    for seed, content in enumerate(per_seed):
        for case in content["cases"]:
            folds[seed, case.get("fold")].append(case["metrics"]["dice"])
    fold_dpc = [float(np.mean(values)) for values in folds.values()]
    return {"dpc": dpc, "mean": float(np.mean(dpc)), "sd": float(np.std(dpc, ddof=1)) if len(dpc) > 1 else None,
            "fold_min": min(fold_dpc), "fold_max": max(fold_dpc)}


def case_means(per_seed: Sequence[Mapping]) -> list[dict]:
    """One record per case with its Dice averaged over the seeds (the unit of the paired tests)."""
    values, types = defaultdict(list), {}
    for content in per_seed:
        for case in content["cases"]:
            values[case["case_id"]].append(case["metrics"]["dice"])
            types[case["case_id"]] = case.get("tumor_type")
    return [{"case_id": k, "tumor_type": types[k], "metrics": {"dice": float(np.mean(v))}} for k, v in values.items()]


def paired_tests(cases: Mapping[str, Sequence[Mapping]], pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Per pair ``(a, b)`` of entry names: :func:`tables.paired_t_test` on the case means, the Wilcoxon
    signed-rank p (zeros by ``zsplit``; None when every difference is 0) with its ``wilcoxon_n`` and
    ``zero_differences``, and the Benjamini-Hochberg q of both over all pairs. A pair sharing fewer than two
    cases gets its mean difference only."""
    results = []
    for a, b in pairs:
        x, y = ({c["case_id"]: c["metrics"]["dice"] for c in cases[n]} for n in (a, b))
        common = sorted(set(x) & set(y))
        differences = np.array([x[k] - y[k] for k in common])
        if len(common) < 2:  # too few cases to test: the difference alone
            results.append({"a": a, "b": b, "n": len(common), "mean_difference": float(np.mean(differences)) if common
                            else None, "t": None, "p": None, "wilcoxon_p": None, "wilcoxon_n": len(common),
                            "zero_differences": int(np.sum(differences == 0))})
            continue
        result = {"a": a, "b": b, **tables.paired_t_test(cases[a], cases[b], "dice")}
        result["wilcoxon_p"] = float(stats.wilcoxon(differences, zero_method="zsplit", method="approx").pvalue) \
            if np.any(differences != 0) else None
        result["wilcoxon_n"], result["zero_differences"] = len(common), int(np.sum(differences == 0))
        results.append(result)
    for key in ("p", "wilcoxon_p"):
        defined = [r for r in results if r[key] is not None]
        if defined:
            for r, q in zip(defined, stats.false_discovery_control([r[key] for r in defined])):
                r[key.replace("p", "q")] = float(q)
    return results


def results_table(labels: Mapping[str, str], per_seed: Mapping[str, Sequence[Mapping]]) -> str:
    """One row per entry: DPC mean +- sd over seeds, the per-fold range, DG, VOE, RVD and DPC per tumor type
    (means over seeds), in percent."""
    types = sorted({t for runs in per_seed.values() for c in runs for t in c["summary"]["per_type"]})
    header = ["entry", "DPC (mean +- sd over seeds)", "folds (min-max)", "DG", "VOE", "RVD"] + types
    rows = []
    for name, label in labels.items():
        seeds = per_seed[name]
        statistics = seed_statistics(seeds)
        sd = "" if statistics["sd"] is None else f" +- {100 * statistics['sd']:.1f}"

        def mean(get):
            values = [get(c) for c in seeds]
            return "-" if any(v is None for v in values) else f"{100 * np.mean(values):.1f}"

        rows.append([label, f"{100 * statistics['mean']:.1f}{sd}",
                     f"{100 * statistics['fold_min']:.1f}-{100 * statistics['fold_max']:.1f}"]
                    + [mean(lambda c, k=k: c["summary"]["all"].get(k)) for k in ("dg", "voe", "rvd")]
                    + [mean(lambda c, t=t: c["summary"]["per_type"].get(t, {}).get("dpc")) for t in types])
    return tables.markdown(header, rows)


def tests_table(labels: Mapping[str, str], results: Sequence[Mapping]) -> str:
    """The paired tests, one row per compared pair (DPC in percentage points)."""
    header = ["A", "B", "n (t-test)", "A - B (DPC points)", "t", "p (t-test)", "q", "n (Wilcoxon; zeros)",
              "p (Wilcoxon)", "q"]

    def number(value, form=".3g"):
        return "-" if value is None else format(value, form)

    rows = [[labels[r["a"]], labels[r["b"]], str(r["n"]), number(None if r["mean_difference"] is None else 100 * r["mean_difference"], "+.1f"),
             number(r["t"], ".2f"),
             number(r["p"]), number(r.get("q")), f"{r['wilcoxon_n']}; {r['zero_differences']}",
             number(r["wilcoxon_p"]), number(r.get("wilcoxon_q"))]
            for r in results]
    return tables.markdown(header, rows)


def curve_points(per_seed: Mapping[str, Sequence[Mapping]], curves: Mapping[str, Mapping[str, Sequence]]) -> dict:
    """``{label: {kind: [(mm, mean DPC over seeds), ...]}}`` from ``{label: {kind: [(mm, entry name), ...]}}``."""
    return {label: {kind: [(mm, seed_statistics(per_seed[name])["mean"]) for mm, name in points]
                    for kind, points in kinds.items()} for label, kinds in curves.items()}


def curves_table(points: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]) -> str:
    """One row per entry and kind of misalignment, one column per magnitude (mm)."""
    magnitudes = sorted({mm for kinds in points.values() for curve in kinds.values() for mm, _ in curve})
    rows = [[label, kind] + [next((f"{100 * v:.1f}" for m, v in curve if m == mm), "-") for mm in magnitudes]
            for label, kinds in points.items() for kind, curve in kinds.items()]
    return tables.markdown(["entry", "ART"] + [f"{mm:g} mm" for mm in magnitudes], rows)


def write(
    workdir: Path,
    title: str,
    description: str,
    labels: Mapping[str, str],
    per_seed: Mapping[str, Sequence[Mapping]],
    compare: Sequence[tuple[str, str]],
    curves: Mapping[str, Mapping[str, Sequence]] | None = None,
    paper: Mapping[str, Mapping] | None = None,
) -> str:
    """``<workdir>/ablation.md`` and its figures for the entries ``labels`` (name -> label) with their pooled
    summaries per seed; returns the report text."""
    cases = {name: case_means(per_seed[name]) for name in labels}
    on_curves = {name for kinds in (curves or {}).values() for points in kinds.values() for mm, name in points if mm > 0}
    shown = {name: label for name, label in labels.items() if name not in on_curves}
    pooled = {label: {"summary": summarize_records([c for s in per_seed[n] for c in s["cases"]])} for n, label in shown.items()}
    figures.spread({label: ([c["metrics"]["dice"] for c in cases[n]], seed_statistics(per_seed[n])["dpc"])
                    for n, label in shown.items()}, workdir / SPREAD_FIGURE)
    figures.per_type_grid(pooled, workdir / PER_TYPE_FIGURE)
    lines = [f"# {title}", "", description, "", "## How the numbers were made", "",
             tables.protocol_table({label: per_seed[n][0] for n, label in shown.items() if ":" not in n}), "",
             "Entries named '..., registration: X' score the same models on the test cases preprocessed with that "
             "registration instead of the default (rigid + B-spline); '..., without ART' give ART as absent.", "",
             "## DPC and metrics (%)", "", results_table(shown, per_seed), "",
             *tables.detection_section(pooled, "every seed's test cases, lesions pooled")]
    if paper and any(label in paper for label in pooled):
        lines += ["## Beside the paper (ours: every seed's cases; the paper's: 121 real cases)", "",
                  tables.paper_comparison_table({k: v for k, v in pooled.items() if k in paper}, paper), ""]
    if compare:
        lines += ["## Paired tests of the per-case DPC (mean over seeds)", "",
                  tests_table(labels, paired_tests(cases, compare)), ""]
    lines += [f"![DPC per entry]({SPREAD_FIGURE})", "", f"![DPC per tumor type]({PER_TYPE_FIGURE})", ""]
    if curves:
        points = curve_points(per_seed, curves)
        figures.misalignment_curves(points, workdir / CURVES_FIGURE)
        lines += ["## DPC (%) with ART misaligned at test time (mean over seeds)", "", curves_table(points), "",
                  f"![DPC against ART misalignment]({CURVES_FIGURE})", ""]
    report = "\n".join(lines)
    write_text(workdir / "ablation.md", report)
    return report
