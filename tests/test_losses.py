"""Losses against hand-computed values (numpy, float64)."""

import jax
import numpy as np
import pytest

from paresseg_jax import losses


@pytest.fixture(scope="module", autouse=True)
def _x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def _case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 2)) * 3
    label = (rng.random((2, 3, 4)) > 0.6).astype(np.int32)
    weight = rng.uniform(0.2, 1.8, size=(2, 3, 4))
    return logits, label, weight


def _p_tumor(logits):
    e = np.exp(logits)
    return e[..., 1] / e.sum(-1)


def test_cross_entropy_one_pixel_by_hand():
    # logits (0, ln 3): p = (1/4, 3/4); label 1 -> -ln(3/4), label 0 -> -ln(1/4)
    logits = np.array([[[[0.0, np.log(3.0)], [0.0, np.log(3.0)]]]])
    label = np.array([[[1, 0]]])
    expected = (-np.log(0.75) - np.log(0.25)) / 2
    got = losses.cross_entropy(logits, label, None)
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_cross_entropy_matches_bce_mean():
    logits, label, weight = _case()
    p = _p_tumor(logits)
    bce = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    np.testing.assert_allclose(float(losses.get_loss("ce")(logits, label, weight)), bce.mean(), rtol=1e-12)


def test_boundary_enhanced_is_weighted_bce_mean():
    logits, label, weight = _case()
    p = _p_tumor(logits)
    bce = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    got = losses.get_loss("be")(logits, label, weight)
    np.testing.assert_allclose(float(got), (weight * bce).mean(), rtol=1e-12)


def test_boundary_enhanced_with_unit_weight_is_cross_entropy():
    logits, label, _ = _case()
    ones = np.ones(label.shape)
    np.testing.assert_allclose(
        float(losses.boundary_enhanced(logits, label, ones)), float(losses.cross_entropy(logits, label)), rtol=1e-12
    )


def test_dice_ce_by_hand():
    logits, label, weight = _case()
    p = _p_tumor(logits)
    bce = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    dice = [(2 * (p[i] * label[i]).sum() + 1) / (p[i].sum() + label[i].sum() + 1) for i in range(2)]
    expected = bce.mean() + 1 - np.mean(dice)
    np.testing.assert_allclose(float(losses.get_loss("dice_ce")(logits, label, weight)), expected, rtol=1e-12)


def test_losses_decompose_over_devices():
    """Mean of per-half losses == loss of the whole batch (data parallelism relies on it)."""
    logits, label, weight = _case()
    for name, fn in losses.LOSSES.items():
        whole = float(fn(logits, label, weight))
        halves = np.mean([float(fn(logits[i : i + 1], label[i : i + 1], weight[i : i + 1])) for i in range(2)])
        np.testing.assert_allclose(halves, whole, rtol=1e-12, err_msg=name)


def test_bfloat16_logits_are_computed_in_float32():
    logits, label, weight = _case()
    got = losses.cross_entropy(jax.numpy.asarray(logits, "bfloat16"), label)
    assert got.dtype == np.float32


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="dice_ce"):
        losses.get_loss("focal")
