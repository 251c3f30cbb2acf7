"""A study's statistics against hand-computed values: DPC over seeds and folds, case means, paired tests."""

import math

import numpy as np
import pytest

from paresseg_jax.evaluate import ablation_report
from paresseg_jax.evaluate.summary import summarize_records
from paresseg_jax.metrics import overlap_metrics


def _metrics(dice: float) -> dict:
    """Counts whose Dice is ``dice``: tp = 100 dice, fp = fn = 100 - tp."""
    tp = round(100 * dice)
    counts = dict(tp=tp, fp=100 - tp, fn=100 - tp, tn=1000)
    return {**counts, **overlap_metrics(**counts)}


def _summary(dice_by_case: dict, folds: dict) -> dict:
    records = [{"case_id": k, "tumor_type": "HCC" if k < "c" else "METs", "fold": folds[k], "metrics": _metrics(v)}
               for k, v in dice_by_case.items()]
    return {"info": {}, "cases": records, "summary": summarize_records(records)}


FOLDS = {"a1": 0, "a2": 0, "c1": 1, "c2": 1}
SEED_0 = _summary({"a1": 0.8, "a2": 0.6, "c1": 0.4, "c2": 0.2}, FOLDS)  # DPC 0.5; folds 0.7, 0.3
SEED_1 = _summary({"a1": 0.9, "a2": 0.7, "c1": 0.5, "c2": 0.1}, FOLDS)  # DPC 0.55; folds 0.8, 0.3


def test_seed_statistics_are_the_pooled_dpc_per_seed_their_mean_sd_and_the_fold_range():
    result = ablation_report.seed_statistics([SEED_0, SEED_1])
    assert result["dpc"] == pytest.approx([0.5, 0.55])
    assert result["mean"] == pytest.approx(0.525)
    assert result["sd"] == pytest.approx(math.sqrt(2 * 0.025**2))  # sample sd of two values: |a - b| / sqrt(2)
    assert (result["fold_min"], result["fold_max"]) == pytest.approx((0.3, 0.8))
    assert ablation_report.seed_statistics([SEED_0])["sd"] is None


def test_case_means_average_each_case_over_seeds():
    means = {c["case_id"]: c["metrics"]["dice"] for c in ablation_report.case_means([SEED_0, SEED_1])}
    assert means == pytest.approx({"a1": 0.85, "a2": 0.65, "c1": 0.45, "c2": 0.15})


def test_paired_tests_match_the_formulas_and_the_q_values_are_benjamini_hochberg():
    a = [{"case_id": f"k{i}", "metrics": {"dice": v}} for i, v in enumerate([0.9, 0.8, 0.7, 0.6, 0.5])]
    b = [{"case_id": f"k{i}", "metrics": {"dice": v}} for i, v in enumerate([0.7, 0.7, 0.4, 0.6, 0.1])]
    same = [{"case_id": c["case_id"], "metrics": {"dice": c["metrics"]["dice"]}} for c in a]
    first, second = ablation_report.paired_tests({"a": a, "b": b, "same": same}, [("a", "b"), ("b", "same")])
    d = np.array([0.2, 0.1, 0.3, 0.0, 0.4])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert first["t"] == pytest.approx(t) and first["mean_difference"] == pytest.approx(0.2) and first["n"] == 5
    assert second["t"] == pytest.approx(-t)  # the same differences, the other way round
    # Wilcoxon: the zero difference is dropped; 4 positive ranks out of 4 -> exact two-sided p = 2 / 2**4
    assert first["wilcoxon_p"] == pytest.approx(2 / 16)
    # Benjamini-Hochberg with two equal p-values: q = p (rank 2 of 2: p * 2 / 2)
    assert first["q"] == pytest.approx(first["p"]) and second["q"] == pytest.approx(second["p"])
    (identical,) = ablation_report.paired_tests({"a": a, "same": same}, [("a", "same")])
    assert identical["wilcoxon_p"] is None and identical["t"] is None


def test_benjamini_hochberg_q_values_by_hand():
    # three comparisons, p = 0.01, 0.04, 0.03 -> sorted 0.01, 0.03, 0.04: q = min over j >= i of p_j * 3 / j
    cases = {}
    for name, shift in (("x", 0.0), ("y", 0.1), ("z", 0.2), ("w", 0.3)):
        cases[name] = [{"case_id": f"k{i}", "metrics": {"dice": v + shift * (i % 3)}} for i, v in enumerate(np.linspace(0.1, 0.9, 9))]
    results = ablation_report.paired_tests(cases, [("y", "x"), ("z", "x"), ("w", "y")])
    p = np.array([r["p"] for r in results])
    order = np.argsort(p)
    expected = np.empty(3)
    running = 1.0
    for rank in range(3, 0, -1):
        running = min(running, p[order[rank - 1]] * 3 / rank)
        expected[order[rank - 1]] = running
    assert [r["q"] for r in results] == pytest.approx(expected)


def test_results_table_has_mean_sd_over_seeds_fold_range_and_types():
    table = ablation_report.results_table({"r": "row"}, {"r": [SEED_0, SEED_1]})
    assert "| row " in table and "52.5 +- 3.5" in table and "30.0-80.0" in table
    assert "HCC" in table and "METs" in table
