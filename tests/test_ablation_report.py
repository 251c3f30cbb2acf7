"""A study's statistics against hand-computed values: DPC over seeds and folds, case means, paired tests."""

import math

import numpy as np
import pytest

from paresseg_jax.evaluate import ablation_report
from paresseg_jax.summary import summarize_records
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
    # Wilcoxon, zsplit: |d| ranks 0 -> 1, 0.1 -> 2, 0.2 -> 3, 0.3 -> 4, 0.4 -> 5; the zero's rank split: R+ = 14.5
    # of n(n+1)/2 = 15, against mean 7.5 and variance n(n+1)(2n+1)/24 = 13.75: two-sided normal p
    z = (14.5 - 7.5) / math.sqrt(13.75)
    assert first["wilcoxon_p"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert first["wilcoxon_n"] == 5 and first["zero_differences"] == 1  # the zero counts in n
    # Benjamini-Hochberg with two equal p-values: q = p (rank 2 of 2: p * 2 / 2)
    assert first["q"] == pytest.approx(first["p"]) and second["q"] == pytest.approx(second["p"])
    (identical,) = ablation_report.paired_tests({"a": a, "same": same}, [("a", "same")])
    assert identical["wilcoxon_p"] is None and identical["t"] is None


def _bh_by_hand(p):
    """Benjamini-Hochberg: sorted p_(1..m), q_(i) = min over j >= i of p_(j) * m / j."""
    p = np.asarray(p)
    order, expected, running = np.argsort(p), np.empty(len(p)), 1.0
    for rank in range(len(p), 0, -1):
        running = min(running, p[order[rank - 1]] * len(p) / rank)
        expected[order[rank - 1]] = running
    return expected


def test_benjamini_hochberg_q_values_by_hand():
    """Three comparisons with distinct p-values (strong, moderate, none), so an uncorrected q = p fails."""
    differences = {"y": [0.30, 0.25, 0.20, 0.35, 0.28, 0.22, 0.31, 0.27],
                   "z": [0.10, -0.05, 0.12, 0.08, -0.02, 0.09, 0.04, 0.11],
                   "w": [0.05, -0.10, 0.02, -0.03, 0.08, -0.06, 0.01, 0.04]}
    cases = {"x": [{"case_id": f"k{i}", "metrics": {"dice": 0.5}} for i in range(8)]}
    for name, d in differences.items():
        cases[name] = [{"case_id": f"k{i}", "metrics": {"dice": 0.5 + v}} for i, v in enumerate(d)]
    results = ablation_report.paired_tests(cases, [("y", "x"), ("z", "x"), ("w", "x")])
    for key, q_key in (("p", "q"), ("wilcoxon_p", "wilcoxon_q")):
        p = [r[key] for r in results]
        assert len(set(p)) == 3
        q = [r[q_key] for r in results]
        assert q == pytest.approx(_bh_by_hand(p))
        assert any(qi > pi * 1.01 for qi, pi in zip(q, p))  # the correction changed something


def test_results_table_has_mean_sd_over_seeds_fold_range_and_types():
    table = ablation_report.results_table({"r": "row"}, {"r": [SEED_0, SEED_1]})
    assert "| row " in table and "52.5 +- 3.5" in table and "30.0-80.0" in table
    assert "HCC" in table and "METs" in table


def _lesion(diameter_mm, dice, detected):
    return {"diameter_mm": diameter_mm, "iou": dice / (2 - dice), "dice": dice, "detected": detected}


def _found(diameter_mm, true):
    return {"diameter_mm": diameter_mm, "iou": 0.8 if true else 0.0, "true": true}


def test_report_has_the_lesion_detection_table_of_every_seed_pooled(tmp_path):
    """Seed 0 finds the 5 mm lesion and misses the 15 mm one (and predicts a false 25 mm one); seed 1 finds both.
    Pooled over seeds: 4 reference lesions, 3 detected; 4 predicted, 3 true; per-lesion Dice by hand."""
    per_seed = []
    for detection in ({"reference": [_lesion(5, 0.9, True), _lesion(15, 0.2, False)],
                       "predicted": [_found(5, True), _found(25, False)]},
                      {"reference": [_lesion(5, 0.7, True), _lesion(15, 0.75, True)],
                       "predicted": [_found(5, True), _found(15, True)]}):
        records = [{**case, "detection": detection if case["case_id"] == "a1" else {"reference": [], "predicted": []}}
                   for case in SEED_0["cases"]]
        per_seed.append({"info": {}, "cases": records, "summary": summarize_records(records)})
    report = ablation_report.write(tmp_path, "t", "d", {"r": "row"}, {"r": per_seed}, [])
    section = report.split("## Lesion detection (every seed's test cases, lesions pooled; IoU > 0.5")[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.split("\n\n")[1].splitlines()]
    assert rows[0] == ["size", "run", "lesions", "detected", "predicted", "true", "recall", "precision", "F1",
                       "lesion Dice"]
    assert rows[2:] == [
        ["all", "row", "4", "3", "4", "3", "75.00", "75.00", "75.00", "63.75"],  # Dice (0.9 + 0.2 + 0.7 + 0.75) / 4
        ["< 10 mm", "row", "2", "2", "2", "2", "100.00", "100.00", "100.00", "80.00"],
        ["10-20 mm", "row", "2", "1", "1", "1", "50.00", "100.00", "66.67", "47.50"],
        ["> 20 mm", "row", "0", "0", "1", "0", "-", "0.00", "-", "-"],
    ]
    assert (tmp_path / "ablation.md").read_text(encoding="utf-8") == report
