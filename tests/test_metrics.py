"""Metrics against hand-computed masks and a brute-force surface-distance oracle."""

import itertools
import math

import numpy as np
import pytest

from paresseg_jax import metrics


def test_overlap_metrics_hand_computed():
    # 20 voxels; ground truth 4 voxels, prediction 6, overlap 3.
    gt = np.zeros(20, np.uint8)
    gt[2:6] = 1
    pred = np.zeros(20, np.uint8)
    pred[3:9] = 1
    m = metrics.case_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 3, 1, 13)
    assert m["dice"] == pytest.approx(2 * 3 / (4 + 6))
    assert m["voe"] == pytest.approx(1 - 3 / 7)
    assert m["rvd"] == pytest.approx((6 - 4) / 4)
    assert m["tpr"] == pytest.approx(3 / 4)
    assert m["tnr"] == pytest.approx(13 / 16)
    assert m["acc"] == pytest.approx((3 / 4 + 13 / 16) / 2)


def test_confusion_counts_and_dice_treat_any_positive_value_as_foreground():
    # Label maps (0/2) and probabilities-turned-masks count alike: what validation, scoring and the
    # benchmarks feed the one counting function.
    gt = np.zeros(20, np.uint8)
    gt[2:6] = 2
    pred = np.zeros(20, np.float32)
    pred[3:9] = 1.0
    assert metrics.confusion_counts(pred, gt) == (3, 3, 1, 13)
    assert metrics.dice(pred, gt) == pytest.approx(2 * 3 / (4 + 6))
    assert metrics.dice(np.zeros(4), np.zeros(4)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_counts(np.zeros(3), np.zeros(4))


def test_surface_distances_anisotropic_shifted_cube():
    # A 3x3x3 cube and the same cube one slice further along z, 5 mm slices.
    # Per direction: 9 surface voxels are a slice (5 mm) away, one face centre
    # is 1 mm (one in-plane voxel) from the other surface, 16 coincide.
    gt = np.zeros((6, 5, 5), bool)
    gt[0:3, 1:4, 1:4] = True
    pred = np.roll(gt, 1, axis=0)
    m = metrics.case_metrics(pred, gt, spacing=(5.0, 1.0, 1.0))
    assert m["assd"] == pytest.approx((2 * 9 * 5 + 2 * 1) / 52)
    assert m["hd95"] == pytest.approx(5.0)
    # The same masks with the spacing's axis order reversed are 1 mm apart:
    # spacing is in array order, and the result must depend on it.
    swapped = metrics.case_metrics(pred, gt, spacing=(1.0, 1.0, 5.0))
    assert swapped["hd95"] == pytest.approx(1.0)


def test_single_voxels_distance_in_mm():
    gt = np.zeros((4, 4, 4), bool)
    pred = np.zeros((4, 4, 4), bool)
    gt[0, 0, 0] = True
    pred[2, 1, 3] = True
    spacing = (5.0, 0.5, 0.7)
    expected = math.sqrt((2 * 5.0) ** 2 + (1 * 0.5) ** 2 + (3 * 0.7) ** 2)
    m = metrics.case_metrics(pred, gt, spacing)
    assert m["hd95"] == pytest.approx(expected)
    assert m["assd"] == pytest.approx(expected)


def _oracle_surface_distances(pred, gt, spacing):
    """Surfaces by explicit face-neighbour checks, distances by all pairs (float64)."""

    def surface_points(mask):
        points = []
        for idx in zip(*np.nonzero(mask)):
            for axis, step in itertools.product(range(3), (-1, 1)):
                nb = list(idx)
                nb[axis] += step
                outside = not (0 <= nb[axis] < mask.shape[axis])
                if outside or not mask[tuple(nb)]:
                    points.append(idx)
                    break
        return np.array(points, np.float64) * np.array(spacing, np.float64)

    a, b = surface_points(gt), surface_points(pred)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    pooled = np.concatenate([pairwise.min(1), pairwise.min(0)])
    return np.percentile(pooled, 95), pooled.mean()


@pytest.mark.parametrize("seed", range(4))
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 7, 6)
    gt = rng.random(shape) < 0.3  # irregular blobs, touching the array borders
    pred = rng.random(shape) < 0.3
    spacing = (3.0, 0.6, 0.8)
    hd95, assd = _oracle_surface_distances(pred, gt, spacing)
    m = metrics.case_metrics(pred, gt, spacing)
    assert m["hd95"] == pytest.approx(hd95, rel=1e-12)
    assert m["assd"] == pytest.approx(assd, rel=1e-12)


def test_mask_filling_the_array_has_its_border_as_surface():
    gt = np.ones((3, 3, 3), bool)
    pred = np.zeros((3, 3, 3), bool)
    pred[1, 1, 1] = True
    m = metrics.case_metrics(pred, gt)
    # Ground-truth surface = the 26 border voxels; the centre is 1 voxel from
    # the 6 face centres, sqrt(2) from edges, sqrt(3) from corners.
    to_pred = [1.0] * 6 + [math.sqrt(2)] * 12 + [math.sqrt(3)] * 8
    assert m["assd"] == pytest.approx((sum(to_pred) + 1.0) / 27)
    assert m["tnr"] is None and m["acc"] is None  # no negative voxel in the ground truth


def test_empty_mask_conventions():
    empty = np.zeros((3, 4, 4), bool)
    some = empty.copy()
    some[1, 1:3, 1:3] = True

    both = metrics.case_metrics(empty, empty)
    assert (both["dice"], both["voe"], both["hd95"], both["assd"]) == (1.0, 0.0, 0.0, 0.0)
    assert both["rvd"] is None and both["tpr"] is None and both["acc"] is None
    assert both["tnr"] == 1.0

    missed = metrics.case_metrics(empty, some)  # prediction empty
    assert (missed["dice"], missed["voe"], missed["tpr"], missed["rvd"]) == (0.0, 1.0, 0.0, -1.0)
    assert missed["hd95"] is None and missed["assd"] is None

    false_alarm = metrics.case_metrics(some, empty)  # ground truth empty
    assert (false_alarm["dice"], false_alarm["voe"]) == (0.0, 1.0)
    assert false_alarm["rvd"] is None and false_alarm["tpr"] is None and false_alarm["hd95"] is None
    assert false_alarm["tnr"] == pytest.approx(1 - 4 / 48)  # 48 voxels, 4 false positives


def test_summarize_pools_counts_and_skips_undefined():
    empty = np.zeros((2, 4, 4), bool)
    big = empty.copy()
    big[:, :, :2] = True  # 16 voxels
    small_gt = empty.copy()
    small_gt[0, 0, 0] = True
    cases = {
        "perfect_big": metrics.case_metrics(big, big),
        "missed_small": metrics.case_metrics(empty, small_gt),
        "no_tumor": metrics.case_metrics(empty, empty),
    }
    s = metrics.summarize(cases)
    assert s["n_cases"] == 3
    assert s["dpc"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert s["dg"] == pytest.approx(2 * 16 / (16 + 17))  # pooled: tp 16, |pred| 16, |gt| 17
    assert s["rvd"] == pytest.approx((0.0 - 1.0) / 2)  # the empty case is left out
    assert s["n_undefined"]["rvd"] == 1
    assert s["hd95"] == pytest.approx(0.0) and s["n_undefined"]["hd95"] == 1
    assert all(v is None or math.isfinite(v) for k, v in s.items() if k in metrics.METRICS)


def test_summarize_metric_undefined_everywhere_is_none():
    empty = np.zeros((2, 2), bool)
    s = metrics.summarize([metrics.case_metrics(empty, empty)])
    assert s["rvd"] is None and s["n_undefined"]["rvd"] == 1


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="binary"):
        metrics.case_metrics(np.full((2, 2), 0.7), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        metrics.case_metrics(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        metrics.case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="at least one"):
        metrics.summarize([])
