"""paresseg_jax.ops.conv2d against lax.conv_general_dilated (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from paresseg_jax.ops import conv as conv_ops
from paresseg_jax.ops import conv2d, conv_weight_grad

DN = ("NHWC", "HWIO", "NHWC")
RULE = (conv_ops.CHUNKED_MIN_OUT_CHANNELS, conv_ops.CHUNKED_MIN_INPUT_VALUES)  # where conv2d chunks dW


@pytest.fixture(autouse=True)
def chunked_everywhere(monkeypatch):
    """The cases here are small, where conv2d takes XLA's weight gradient: the chunked one, which they test,
    is forced (test_weight_gradient_is_chunked_only_where_it_pays tests the choice)."""
    monkeypatch.setattr(conv_ops, "CHUNKED_MIN_OUT_CHANNELS", 0)
    monkeypatch.setattr(conv_ops, "CHUNKED_MIN_INPUT_VALUES", 0)


def _reference(x, kernel, bias, padding):
    y = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DN)
    return y if bias is None else y + bias


def _inputs(dtype, shape=(2, 11, 9, 5), k=3, cout=7, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], shape, dtype)
    kernel = jax.random.normal(keys[1], (k, k, shape[-1], cout), dtype)
    bias = jax.random.normal(keys[2], (cout,), dtype)
    probe = jax.random.normal(keys[3], shape[:1] + shape[1:3] + (cout,), dtype)
    return x, kernel, bias, probe


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


CASES = [  # kernel size, padding as given to conv2d, the same padding explicit
    (3, "SAME", ((1, 1), (1, 1))),
    (1, "SAME", ((0, 0), (0, 0))),
    (3, "VALID", ((0, 0), (0, 0))),
    (5, 2, ((2, 2), (2, 2))),
    (3, ((0, 2), (1, 0)), ((0, 2), (1, 0))),
    (2, "SAME", ((0, 1), (0, 1))),
]


@pytest.mark.parametrize("k,padding,explicit", CASES)
def test_values_and_gradients_float64(x64, k, padding, explicit):
    x, kernel, bias, _ = _inputs(jnp.float64, k=k)
    y = conv2d(x, kernel, bias, padding=padding)
    np.testing.assert_allclose(y, _reference(x, kernel, bias, explicit), rtol=1e-12, atol=1e-12)
    cot = jax.random.normal(jax.random.key(9), y.shape, jnp.float64)
    mine = jax.vjp(lambda *a: conv2d(*a, padding=padding), x, kernel, bias)[1](cot)
    ref = jax.vjp(lambda *a: _reference(*a, explicit), x, kernel, bias)[1](cot)
    for name, a, b in zip(("x", "kernel", "bias"), mine, ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11, err_msg=name)
        assert a.dtype == jnp.float64, name


@pytest.mark.parametrize("k,padding,explicit", CASES[:3])
def test_gradients_float32_jitted(k, padding, explicit):
    x, kernel, bias, _ = _inputs(jnp.float32, k=k)
    cot = jax.random.normal(jax.random.key(9), conv2d(x, kernel, padding=padding).shape, jnp.float32)
    mine = jax.jit(jax.vjp(lambda *a: conv2d(*a, padding=padding), x, kernel, bias)[1])(cot)
    ref = jax.vjp(lambda *a: _reference(*a, explicit), x, kernel, bias)[1](cot)
    for name, a, b in zip(("x", "kernel", "bias"), mine, ref):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=name)
        assert a.dtype == jnp.float32, name


@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_weight_grad_chunks_match_float64(x64, budget):
    """One row per chunk, a chunk size that does not divide the rows (zero
    padded tail), and the whole image in one chunk give the same dW."""
    x, kernel, _, _ = _inputs(jnp.float64, shape=(3, 13, 6, 4), k=3, cout=5)
    padding = ((1, 1), (1, 1))
    dy = jax.random.normal(jax.random.key(3), (3, 13, 6, 5), jnp.float64)
    ref = jax.vjp(lambda w: _reference(x, w, None, padding), kernel)[1](dy)[0]
    got = conv_weight_grad(x, dy, kernel.shape, padding, budget=budget)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,k,cout,chunked", [
    ((4, 32, 43, 48), 3, 48, True), ((4, 32, 43, 47), 3, 48, False), ((4, 32, 43, 48), 3, 31, False),
    ((2, 224, 224, 3), 3, 64, True), ((2, 224, 224, 64), 3, 16, False), ((2, 8, 8, 4), 1, 4, False)])
def test_weight_gradient_is_chunked_only_where_it_pays(monkeypatch, shape, k, cout, chunked):
    """The loop over row chunks (a `scan` in the gradient's program) from 32 output channels and 2**16 input
    values per image (32 x 43 x 48 = 66,048), 3x3 and larger; a 1x1 kernel's gradient is one GEMM either way."""
    monkeypatch.setattr(conv_ops, "CHUNKED_MIN_OUT_CHANNELS", RULE[0])
    monkeypatch.setattr(conv_ops, "CHUNKED_MIN_INPUT_VALUES", RULE[1])
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    kernel = jax.ShapeDtypeStruct((k, k, shape[-1], cout), jnp.float32)
    program = str(jax.make_jaxpr(jax.grad(lambda w, v: conv2d(v, w).sum()))(kernel, x))
    assert ("scan[" in program) == chunked
    if not chunked:  # XLA's weight gradient, the values of the reference's
        small = _inputs(jnp.float32, shape=(2, 9, 8, 4), k=3, cout=6)
        mine = jax.grad(lambda w: conv2d(small[0], w).sum())(small[1])
        ref = jax.grad(lambda w: _reference(small[0], w, None, ((1, 1), (1, 1))).sum())(small[1])
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_rows_per_chunk():
    assert conv_ops._rows_per_chunk(224, 100, 1600) == 16  # divisor within the budget
    assert conv_ops._rows_per_chunk(13, 10, 50) == 5  # prime rows: no useful divisor, padded tail
    assert conv_ops._rows_per_chunk(8, 10, 5) == 1  # a row larger than the budget still makes a chunk
    assert conv_ops._rows_per_chunk(8, 10, 10**6) == 8


def test_weight_grad_by_hand():
    """With dy = 1 at output (0, 0) only, dW is the padded input window that output saw."""
    x = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)  # [[1, 2], [3, 4]]
    dy = jnp.array([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 2, 1)  # only output (0, 0)
    dw = conv_weight_grad(x, dy, (3, 3, 1, 1), ((1, 1), (1, 1)))[..., 0, 0]
    # output (0, 0) sees xpad[0:3, 0:3] = [[0, 0, 0], [0, 1, 2], [0, 3, 4]]
    np.testing.assert_array_equal(dw, [[0, 0, 0], [0, 1, 2], [0, 3, 4]])


def test_bfloat16_keeps_dtype_and_accumulates_in_float32():
    x, kernel, bias, _ = _inputs(jnp.float32)
    xb, kb, bb = (a.astype(jnp.bfloat16) for a in (x, kernel, bias))
    y = conv2d(xb, kb, bb)
    assert y.dtype == jnp.bfloat16
    dx, dk, db = jax.grad(lambda *a: conv2d(*a).astype(jnp.float32).sum(), (0, 1, 2))(xb, kb, bb)
    assert (dx.dtype, dk.dtype, db.dtype) == (jnp.bfloat16,) * 3
    ref = jax.grad(lambda k: _reference(xb.astype(jnp.float32), k, None, ((1, 1), (1, 1))).sum())(
        kb.astype(jnp.float32))
    np.testing.assert_allclose(dk.astype(jnp.float32), ref, rtol=2e-2, atol=2e-2 * float(jnp.abs(ref).max()))


def test_other_backends_keep_xla_weight_gradient(x64):
    """The non-CPU branch (XLA's own weight gradient) gives the same dW."""
    x, kernel, _, _ = _inputs(jnp.float64)
    dy = jax.random.normal(jax.random.key(5), (2, 11, 9, 7), jnp.float64)
    padding = ((1, 1), (1, 1))
    np.testing.assert_allclose(conv_ops._xla_weight_grad(x, dy, kernel.shape, padding),
                               conv_weight_grad(x, dy, kernel.shape, padding), rtol=1e-12, atol=1e-12)


def test_errors_name_the_argument():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, jnp.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, jnp.zeros((3, 3, 3, 4)), padding="FULL")
    with pytest.raises(ValueError, match="NHWC"):
        conv2d(jnp.zeros((4, 4, 3)), jnp.zeros((3, 3, 3, 4)))


def test_conv_impl_switch_traces_plain_xla_convolution():
    """Inside conv_impl('xla') conv2d is lax.conv_general_dilated itself (no custom VJP in the
    jaxpr), outside it the custom VJP; the switch is undone on exit and bad names are refused."""
    x, kernel, _, _ = _inputs(jnp.float32)

    def loss(k):  # a fresh function per trace: jax caches traces by function, not by this switch
        return conv2d(x, k).sum()

    assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(kernel))
    with conv_ops.conv_impl("xla"):
        plain = jax.make_jaxpr(lambda k: conv2d(x, k).sum())(kernel)
        xla_grad = jax.grad(lambda k: conv2d(x, k).sum())(kernel)
    assert "custom_vjp_call" not in str(plain) and "conv_general_dilated" in str(plain)
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda k: conv2d(x, k).sum())(kernel))
    scale = float(jnp.abs(xla_grad).max())
    np.testing.assert_allclose(jax.grad(loss)(kernel), xla_grad, rtol=0, atol=2e-5 * scale)
    with pytest.raises(ValueError, match="direct"):
        with conv_ops.conv_impl("winograd"):
            pass


def test_model_convolutions_use_the_fast_gradient():
    """Every stride-1 convolution of a model goes through conv2d (so the CPU weight gradient applies),
    and every transposed one (k4 s2 p1) as four sub-pixel phase convolutions."""
    from paresseg_jax import models

    module = models.create("paresseg", width=4)
    variables = models.init_variables(module, jax.random.key(0))
    inputs = [jnp.ones((2, 32, 32, 3))] * 2
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(v, *inputs, train=False))(variables))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
    stride1 = [p for p in paths if p.endswith("['kernel']") and "deconv" not in p]
    transposed = [p for p in paths if p.endswith("['kernel']") and "deconv" in p]
    assert len(stride1) > 20 and len(transposed) > 5
    assert jaxpr.count("name=_conv2d") == len(stride1) + 4 * len(transposed)
    assert jaxpr.count("name=_max_pool") == 2 * 5  # five poolings per phase encoder, no reduce_window left
    assert "reduce_window" not in jaxpr
