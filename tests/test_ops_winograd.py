"""Winograd F(2x2, 3x3) (`ops.winograd`) against lax.conv_general_dilated, and where conv2d uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from paresseg_jax.ops import conv as conv_ops
from paresseg_jax.ops import conv2d, winograd

SAME = ((1, 1), (1, 1))


def _reference(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), SAME, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _inputs(dtype, shape, cout, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], shape, dtype)
    kernel = jax.random.normal(keys[1], (3, 3, shape[-1], cout), dtype)
    probe = jax.random.normal(keys[2], shape[:3] + (cout,), dtype)
    return x, kernel, probe


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("shape,cout", [((2, 6, 8, 3), 5), ((1, 2, 2, 1), 1), ((3, 4, 10, 7), 2)])
def test_values_and_gradients_float64(x64, shape, cout):
    """Exact arithmetic up to float64 rounding: tiles at every border, non-square images, Cin != Cout."""
    x, kernel, probe = _inputs(jnp.float64, shape, cout)
    y, pullback = jax.vjp(winograd.conv3x3, x, kernel)
    np.testing.assert_allclose(y, _reference(x, kernel), rtol=1e-12, atol=1e-12)
    dx, dk = pullback(probe)
    rx, rk = jax.vjp(_reference, x, kernel)[1](probe)
    np.testing.assert_allclose(dx, rx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, rk, rtol=1e-12, atol=1e-12)
    assert (dx.dtype, dk.dtype) == (jnp.float64, jnp.float64)


def test_one_tile_by_hand(x64):
    """A single 2x2 output from a 2x2 input: each output sums the kernel taps that land on the image."""
    x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    kernel = jnp.arange(1.0, 10.0).reshape(3, 3, 1, 1)  # taps k[i, j] = 3 i + j + 1
    # y[0, 0] = k[1,1] x00 + k[1,2] x01 + k[2,1] x10 + k[2,2] x11 = 5 + 12 + 24 + 36
    expected = np.array([[5 + 12 + 24 + 36, 4 + 10 + 21 + 32], [2 + 6 + 15 + 24, 1 + 4 + 12 + 20]], float)
    np.testing.assert_allclose(winograd.conv3x3(x, kernel)[0, ..., 0], expected, rtol=1e-14)
    # d sum(y) / d x00 = the taps that reach x00 from the four outputs: rows 0-1, columns 0-1
    dx = jax.grad(lambda v: winograd.conv3x3(v, kernel).sum())(x)[0, ..., 0]
    np.testing.assert_allclose(dx, [[1 + 2 + 4 + 5, 2 + 3 + 5 + 6], [4 + 5 + 7 + 8, 5 + 6 + 8 + 9]], rtol=1e-14)


def test_float32_within_rounding_of_direct_convolution():
    """PA-ResSeg-like channels: Winograd's float32 values and gradients within 1e-5 of the largest."""
    x, kernel, probe = _inputs(jnp.float32, (2, 16, 16, 64), 64)
    kernel = kernel / 24.0  # unit-scale outputs, as He-initialised layers give
    y, pullback = jax.jit(lambda a, b: jax.vjp(winograd.conv3x3, a, b))(x, kernel)
    ref, ref_pullback = jax.vjp(_reference, x, kernel)
    for name, a, b in zip(("y", "dx", "dkernel"), (y, *pullback(probe)), (ref, *ref_pullback(probe))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()), err_msg=name)


def _lowered(fn, *args, platform="cpu"):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_conv2d_takes_winograd_on_cpu_only_where_it_pays():
    """64 channels and 64 tiles: the CPU lowering has no convolution left (Winograd's GEMMs), a
    CUDA lowering keeps XLA's convolutions; too few channels or tiles, odd sizes, other paddings
    and conv_impl('direct') keep convolutions on the CPU too."""
    x, kernel, _ = _inputs(jnp.float32, (1, 16, 16, 64), 64)

    def grad(fn):
        return lambda a, b: jax.grad(lambda u, v: (fn(u, v) ** 2).sum(), (0, 1))(a, b)

    fast = grad(conv2d)
    assert "convolution" not in _lowered(fast, x, kernel)
    assert _lowered(fast, x, kernel, platform="cuda").count("stablehlo.convolution") == 3
    with conv_ops.conv_impl("direct"):
        assert "stablehlo.convolution" in _lowered(grad(lambda a, b: conv2d(a, b)), x, kernel)
    for args in ((x[:, :14], kernel),  # 56 tiles
                 (x[..., :32], kernel[:, :, :32]),  # 32 channels in
                 (x, kernel[..., :48]),  # 48 out
                 (jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), kernel),  # 17 x 17
                 (x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))):
        assert "stablehlo.convolution" in _lowered(grad(conv2d), *args), [a.shape for a in args]
    assert "stablehlo.convolution" in _lowered(grad(lambda a, b: conv2d(a, b, padding=((0, 2), (1, 1)))), x, kernel)
    # and what it computes there is the convolution
    np.testing.assert_allclose(jax.jit(conv2d)(x, kernel), _reference(x, kernel), rtol=0,
                               atol=2e-5 * float(jnp.abs(_reference(x, kernel)).max()))
