"""Evaluation records, tables and the paired t-test against hand-computed values."""

import json
import math

import numpy as np
import pytest

from paresseg_jax import summary
from paresseg_jax.evaluate import tables


def _two_tumors():
    gt = np.zeros((7, 8, 8), np.uint8)
    gt[1:5, 1:4, 1:4] = 1  # tumor 1: slices 1..4
    gt[3, 6:8, 6:8] = 1  # tumor 2: slice 3 only, not touching tumor 1
    return gt


def test_slice_groups_per_tumor():
    groups = summary.slice_groups(_two_tumors())
    assert np.flatnonzero(groups["marginal"]).tolist() == [1, 3, 4]  # slice 3 is tumor 2's first and last
    assert np.flatnonzero(groups["middle"]).tolist() == [2]
    assert np.flatnonzero(groups["tumor"]).tolist() == [1, 2, 3, 4]
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[2, 2, 2] = 1  # one tumor through corner contacts
    assert np.flatnonzero(summary.slice_groups(diagonal)["middle"]).tolist() == [1]


def test_evaluate_case_slice_groups_hand_counts():
    gt = _two_tumors()
    pred = gt.copy()
    pred[2] = 0  # miss the middle slice entirely (9 voxels)
    pred[6, 0, 0] = 1  # a false positive on a slice without tumor
    record = summary.evaluate_case(pred, gt, (5.0, 1.0, 1.0), "c1", "HCC", fold=2)
    assert record["fold"] == 2 and record["tumor_type"] == "HCC"
    middle = record["slices"]["middle"]
    assert (middle["tp"], middle["fp"], middle["fn"], middle["tn"]) == (0, 0, 9, 64 - 9)
    assert middle["dice"] == 0.0 and middle["num_slices"] == 1
    marginal = record["slices"]["marginal"]
    assert (marginal["tp"], marginal["fp"], marginal["fn"]) == (9 + 9 + 4 + 9, 0, 0)
    assert marginal["dice"] == 1.0 and marginal["tnr"] == 1.0
    whole = record["metrics"]
    assert whole["dice"] == pytest.approx(2 * 31 / (32 + 40))  # tp 31, pred 31 + 1 false positive, gt 40
    assert whole["fp"] == 1
    no_tumor = summary.evaluate_case(np.zeros_like(gt), np.zeros_like(gt), None, "c0")
    assert no_tumor["slices"] == {} and no_tumor["metrics"]["dice"] == 1.0


def _record(case_id, tumor_type, dice_pair):
    """A case whose prediction overlaps a 10-voxel tumor by ``dice_pair = (tp, fp)``."""
    tp, fp = dice_pair
    gt = np.zeros((3, 6, 6), np.uint8)
    gt[1].flat[:10] = 1
    pred = np.zeros_like(gt)
    pred[1].flat[:tp] = 1
    pred[2].flat[:fp] = 1
    return summary.evaluate_case(pred, gt, (2.0, 1.0, 1.0), case_id, tumor_type)


def test_summary_json_round_trip_and_tables(tmp_path):
    records = [_record("a", "FNH", (10, 0)), _record("b", "FNH", (5, 0)), _record("c", "HCC", (10, 10))]
    path = summary.write_summary(tmp_path / "run", records, run="test")
    assert path.name == summary.SUMMARY_FILE
    content = summary.read_summary(tmp_path / "run")
    assert json.loads(path.read_text())["info"] == {"run": "test"}
    overall = content["summary"]["all"]
    dices = [1.0, 2 * 5 / 15, 2 * 10 / 30]
    assert overall["dpc"] == pytest.approx(np.mean(dices))
    assert overall["dg"] == pytest.approx(2 * 25 / (30 + 35))
    assert content["summary"]["per_type"]["FNH"]["dpc"] == pytest.approx((1.0 + 2 * 5 / 15) / 2)
    # Every tumor is one slice thick, so all tumor slices are marginal and none middle.
    assert content["summary"]["slices"]["marginal"]["n_cases"] == 3
    assert "middle" not in content["summary"]["slices"]

    runs = {"A": content, "B": content}
    table = tables.metrics_table(runs)
    assert f"{100 * np.mean(dices):.2f}" in table and table.count("\n") == 3
    per_type = tables.per_type_table(runs)
    assert "FNH (n)" in per_type and f"{100 * (1 + 2 / 3) / 2:.2f} (2)" in per_type
    slices = tables.slice_table(runs)
    assert "| middle" in slices and slices.splitlines()[0].startswith("| slices")


def test_paired_t_test_matches_closed_form():
    # Differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt(3));
    # Student's t with 2 degrees of freedom has the CDF 1/2 + t / (2 sqrt(2 + t^2)).
    a = [{"case_id": k, "metrics": {"dice": v}} for k, v in [("x", 0.9), ("y", 0.8), ("z", 0.7), ("w", None)]]
    b = [{"case_id": k, "metrics": {"dice": v}} for k, v in [("x", 0.8), ("y", 0.6), ("z", 0.4), ("w", 0.5), ("v", 1)]]
    result = tables.paired_t_test(a, b)
    t = 0.2 / (0.1 / math.sqrt(3))
    assert result["t"] == pytest.approx(t)
    assert result["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert (result["n"], result["left_out"], result["only_in_one_run"]) == (3, 1, 1)
    assert "p = 0.07418" in tables.t_test_line("A", "B", result)
    with pytest.raises(ValueError, match="same cohort"):
        tables.paired_t_test(a[:1], b[:1])


def test_read_summary_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        summary.read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="not a paresseg summary"):
        summary.read_summary(tmp_path)


def test_figures_write_pngs(tmp_path):
    from paresseg_jax.evaluate import figures

    lines = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 5)]
    lines += [{"step": 4, "split": "val", "global_dice": 0.5, "mean_dice": 0.4, "case_dice": {"a": 0.4}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curves = figures.training_curves({"run": tmp_path}, tmp_path / "figs" / "curves.png")
    assert curves.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        figures.training_curves({"missing": tmp_path / "nowhere"}, tmp_path / "x.png")
    records = [_record("a", "FNH", (10, 0)), _record("b", "HCC", (5, 0))]
    content = {"cases": records, "summary": summary.summarize_records(records)}
    bars = figures.per_type_bars({"A": content, "B": content}, tmp_path / "figs" / "bars.png")
    assert bars.read_bytes()[:4] == b"\x89PNG"
