"""paresseg_jax.ops.max_pool against flax's pooling (values) and PyTorch's (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from paresseg_jax.ops import max_pool


def _torch_pool_and_grad(x, g, size):
    tx = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, size, stride=size)
    ty.backward(torch.from_numpy(np.ascontiguousarray(np.asarray(g).transpose(0, 3, 1, 2))))
    return ty.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("shape,size", [((2, 8, 6, 3), 2), ((1, 9, 7, 2), 2), ((2, 12, 9, 4), 3)])
def test_values_and_gradient_match_torch_with_ties(shape, size):
    rng = np.random.default_rng(0)
    # ReLU'd and rounded: many windows hold equal maxima (zeros, repeated values).
    x = np.maximum(np.round(rng.normal(size=shape), 0), 0).astype(np.float32)
    y, vjp = jax.vjp(lambda v: max_pool(v, size), jnp.asarray(x))
    g = rng.normal(size=y.shape).astype(np.float32)
    (dx,) = vjp(jnp.asarray(g))
    ty, tdx = _torch_pool_and_grad(x, g, size)
    np.testing.assert_array_equal(np.asarray(y), ty)
    np.testing.assert_array_equal(np.asarray(dx), tdx)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(nn.max_pool(jnp.asarray(x), (size, size), (size, size))))


def test_gradient_by_hand_and_under_jit():
    x = jnp.asarray([[1., 3., 0., 0.],
                     [3., 2., 0., 0.]]).reshape(1, 2, 4, 1)
    dx = jax.jit(jax.grad(lambda v: jnp.sum(max_pool(v) * jnp.asarray([10., 20.]).reshape(1, 1, 2, 1))))(x)
    # first maximum in scan order: the 3 in row 0 of window 0, the top-left 0 of window 1
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], [[0, 10, 20, 0], [0, 0, 0, 0]])


def test_nan_is_the_maximum_and_gets_the_gradient():
    x = np.array([[1., np.nan], [5., 2.]], np.float32).reshape(1, 2, 2, 1)
    y, vjp = jax.vjp(max_pool, jnp.asarray(x))
    (dx,) = vjp(jnp.ones_like(y))
    ty, tdx = _torch_pool_and_grad(x, np.ones((1, 1, 1, 1), np.float32), 2)
    assert np.isnan(np.asarray(y)).all() and np.isnan(ty).all()
    np.testing.assert_array_equal(np.asarray(dx), tdx)


def test_bfloat16_keeps_dtype():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3), jnp.bfloat16)
    y, vjp = jax.vjp(max_pool, x)
    assert y.dtype == jnp.bfloat16 and vjp(jnp.ones_like(y))[0].dtype == jnp.bfloat16


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="NHWC"):
        max_pool(jnp.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        max_pool(jnp.zeros((1, 1, 4, 3)))


def test_whole_model_gradient_equals_reduce_window_pooling(monkeypatch):
    """In a jitted float64 model gradient XLA recomputed the pooled activations inside the backward
    pass with other rounding, so maxima matched nothing (before the optimisation barrier).

    XLA's own convolutions (ops.conv_impl("xla")) compile in about half the time of the default ones, and
    the pooling is what is checked: without the barrier this test still fails (every weight of the first
    kernel compared is off, relative error up to ~2e2). One image of 96 x 160 at width 8 shows it; 64 x 64
    at width 4 passes without the barrier."""
    from paresseg_jax import losses, models, ops
    from paresseg_jax.models import resseg

    with jax.enable_x64(True), ops.conv_impl("xla"):
        module = models.create("resseg", width=8, dtype="float64")
        variables = jax.tree.map(lambda v: v.astype(jnp.float64) if v.dtype == jnp.float32 else v,
                                 models.init_variables(module, jax.random.key(0)))
        rng = np.random.default_rng(1)
        image = jnp.asarray(rng.random((1, 96, 160, 3)))
        label = jnp.asarray(rng.random((1, 96, 160)) > 0.7, jnp.int32)

        def grads():
            def loss(params):
                logits, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, image,
                                         train=True, mutable=["batch_stats"])
                return losses.cross_entropy(logits, label)
            return jax.jit(jax.grad(loss))(variables["params"])

        ours = grads()
        monkeypatch.setattr(resseg, "max_pool", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
        reference = grads()
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(ours)):
        if jax.tree_util.keystr(path).endswith("['kernel']"):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))
