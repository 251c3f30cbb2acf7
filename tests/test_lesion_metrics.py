"""Lesion detection, per-lesion Dice and size bins against hand counts (paresseg_jax.lesion_metrics)."""

import math

import numpy as np
import pytest

from paresseg_jax import lesion_metrics
from paresseg_jax.summary import evaluate_case, summarize_records


def _masks():
    """Four reference and five predicted lesions on one slice of 1 mm voxels (boxes as [rows, columns])."""
    gt, pred = np.zeros((3, 40, 60), np.uint8), np.zeros((3, 40, 60), np.uint8)
    gt[1, 2:6, 2:6] = 1  # R1 16 voxels, diameter 3 sqrt 2: P1 overlaps 12 -> IoU 12/20, detected, Dice 0.75
    pred[1, 2:6, 3:7] = 1
    gt[1, 10:22, 2:14] = 1  # R2 144, diameter 11 sqrt 2: predicted in two pieces P2 (72) and P3 (60)
    pred[1, 10:22, 2:8] = 1  # U = 132 inside R2: IoU 132/144, detected; each piece alone IoU 1/2 or less,
    pred[1, 10:22, 9:14] = 1  # yet both are true: pieces of a detection
    gt[1, 30:32, 2:4] = 1  # R3 4, drowned in P4 (36): IoU 4/36, missed, Dice 8/40; P4 false
    pred[1, 28:34, 0:6] = 1
    gt[1, 2:4, 35:58] = 1  # R4 46, diameter sqrt(1 + 22^2) > 20 mm: no prediction, Dice 0
    pred[1, 30:33, 40:58] = 1  # P5 54, diameter sqrt(4 + 17^2): touches nothing, false
    return pred, gt


def test_detection_hand_counted():
    pred, gt = _masks()
    detection = lesion_metrics.lesion_detection(pred, gt, (2.5, 1.0, 1.0))
    by_diameter = {round(r["diameter_mm"], 2): r for r in detection["reference"]}
    assert set(by_diameter) == {round(3 * math.sqrt(2), 2), round(11 * math.sqrt(2), 2), round(math.sqrt(2), 2),
                                round(math.sqrt(1 + 22**2), 2)}
    r1, r2 = by_diameter[round(3 * math.sqrt(2), 2)], by_diameter[round(11 * math.sqrt(2), 2)]
    assert (r1["iou"], r1["dice"], r1["detected"]) == (pytest.approx(0.6), pytest.approx(0.75), True)
    assert (r2["iou"], r2["dice"], r2["detected"]) == (pytest.approx(132 / 144), pytest.approx(264 / 276), True)
    assert [p["true"] for p in sorted(detection["predicted"], key=lambda p: -p["diameter_mm"])] == [
        False, True, True, False, True]  # P5 17.1, P2 12.1, P3 11.7, P4 7.1, P1 4.2 mm

    scores = lesion_metrics.detection_scores([detection])
    dices = [0.75, 264 / 276, 0.2, 0.0]
    assert scores["all"] == pytest.approx({"n_reference": 4, "detected": 2, "n_predicted": 5, "true": 3,
                                           "recall": 0.5, "precision": 0.6, "f1": 0.6 / 1.1,
                                           "lesion_dice": np.mean(dices)})
    assert scores["<10mm"] == pytest.approx({"n_reference": 2, "detected": 1, "n_predicted": 2, "true": 1,
                                             "recall": 0.5, "precision": 0.5, "f1": 0.5, "lesion_dice": 0.475})
    assert scores["10-20mm"] == pytest.approx({"n_reference": 1, "detected": 1, "n_predicted": 3, "true": 2,
                                               "recall": 1.0, "precision": 2 / 3, "f1": 0.8,
                                               "lesion_dice": 264 / 276})
    assert scores[">20mm"] == {"n_reference": 1, "detected": 0, "n_predicted": 0, "true": 0, "recall": 0.0,
                               "precision": None, "f1": None, "lesion_dice": 0.0}


def test_scores_pool_lesions_over_cases_and_empty_cases_are_undefined():
    pred, gt = _masks()
    empty = lesion_metrics.lesion_detection(np.zeros_like(pred), np.zeros_like(gt))
    assert empty == {"reference": [], "predicted": []}
    assert lesion_metrics.detection_scores([empty])["all"]["recall"] is None
    twice = lesion_metrics.detection_scores([lesion_metrics.lesion_detection(pred, gt, (2.5, 1, 1))] * 2 + [empty])
    assert (twice["all"]["n_reference"], twice["all"]["detected"], twice["all"]["true"]) == (8, 4, 6)
    only_fp = lesion_metrics.detection_scores([lesion_metrics.lesion_detection(pred, np.zeros_like(gt))])["all"]
    assert (only_fp["precision"], only_fp["recall"], only_fp["f1"]) == (0.0, None, None)


def test_size_bins_at_their_edges():
    assert [lesion_metrics.size_bin(d) for d in (0.0, 9.99, 10.0, 20.0, 20.01)] == [
        "<10mm", "<10mm", "10-20mm", "10-20mm", ">20mm"]


def test_evaluation_records_and_summary_carry_detection():
    pred, gt = _masks()
    record = evaluate_case(pred, gt, (2.5, 1.0, 1.0), "a")
    assert len(record["detection"]["reference"]) == 4
    summary = summarize_records([record, {**record, "case_id": "b"}])
    assert summary["detection"]["all"]["n_predicted"] == 10 and summary["detection"]["all"]["precision"] == 0.6


def test_detection_table_rows_per_size_and_run():
    from paresseg_jax.evaluate import tables

    pred, gt = _masks()
    summary = summarize_records([evaluate_case(pred, gt, (2.5, 1.0, 1.0), "a")])
    table = tables.detection_table({"ours": {"summary": summary}, "older": {"summary": {"all": {}}}})
    assert "| all      | ours  | 4       | 2        | 5         | 3    | 50.00  | 60.00     | 54.55 |" in table
    assert "| > 20 mm  | ours  | 1       | 0        | 0         | 0    | 0.00   | -         | -     |" in table
    assert "| all      | older | -" in table
