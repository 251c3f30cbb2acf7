"""Training losses for 2-class tumor segmentation, found by name in ``LOSSES``.

Every loss has the same signature ``loss(logits, label, weight) -> scalar``:
``logits`` ``[B, H, W, 2]`` (any float dtype; computed in at least float32),
``label`` ``[B, H, W]`` int (tumor 0/1), ``weight`` ``[B, H, W]`` the
precomputed 3D boundary-enhanced weight map (paper Eq. 5, cropped with the
patch). Losses that do not use the weight ignore it, so the train step never
branches on the loss.

All three are means over samples of per-sample terms with the same pixel
count, so the mean of per-device losses equals the loss of the global batch:
data-parallel training gives the same gradients as one device.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _at_least_f32(x: jax.Array) -> jax.Array:
    """bfloat16/float16 -> float32; float32 and float64 stay as they are."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pixel_nll(logits: jax.Array, label: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] per pixel, in at least float32."""
    log_probs = jax.nn.log_softmax(_at_least_f32(logits), axis=-1)
    return -jnp.take_along_axis(log_probs, label[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy(logits: jax.Array, label: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean over pixels of -log p(label): ``torch.nn.CrossEntropyLoss()``, the reference's loss."""
    del weight
    return jnp.mean(_pixel_nll(logits, label))


def boundary_enhanced(logits: jax.Array, label: jax.Array, weight: jax.Array) -> jax.Array:
    """3D boundary-enhanced loss, paper Eq. 6: mean of ``w * BCE(y, p_tumor)``.

    With two classes and ``p_tumor = softmax[..., 1]``, BCE(y, p) equals the
    per-pixel cross-entropy, so it is computed from log-softmax (no log(0)).
    """
    return jnp.mean(_at_least_f32(weight) * _pixel_nll(logits, label))


def soft_dice_loss(logits: jax.Array, label: jax.Array, smooth: float = 1.0) -> jax.Array:
    """1 - soft Dice of the tumor probability, per sample then averaged.

    Per sample (not pooled over the batch) so the loss decomposes over
    devices; ``smooth`` keeps tumor-free patches defined (their Dice -> 1 as p -> 0).
    """
    prob = jax.nn.softmax(_at_least_f32(logits), axis=-1)[..., 1]
    target = label.astype(prob.dtype)
    axes = tuple(range(1, prob.ndim))
    overlap = jnp.sum(prob * target, axis=axes)
    total = jnp.sum(prob, axis=axes) + jnp.sum(target, axis=axes)
    return 1.0 - jnp.mean((2.0 * overlap + smooth) / (total + smooth))


def dice_cross_entropy(logits: jax.Array, label: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Cross-entropy plus soft Dice loss (an extra option; not in the paper)."""
    return cross_entropy(logits, label) + soft_dice_loss(logits, label)


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "be": boundary_enhanced,
    "dice_ce": dice_cross_entropy,
}


def get_loss(name: str) -> LossFn:
    """The loss registered as ``name`` (``config.train.loss``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r} (config.train.loss); choose one of {sorted(LOSSES)}")
    return LOSSES[name]
