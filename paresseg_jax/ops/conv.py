"""Stride-1 2D convolution, fast on CPU: Winograd where it pays, a fast weight gradient elsewhere.

On CPU, 3x3 'SAME' convolutions with at least `WINOGRAD_MIN_CHANNELS`
channels in and out, even height and width and enough 2x2 output tiles run
as Winograd F(2x2, 3x3) (`ops.winograd`: 2.25x fewer multiplies, forward and
both gradients). The others use XLA's forward and input-gradient
convolutions (they run at the CPU's matrix-multiply rate) with, where it
pays (`CHUNKED_MIN_OUT_CHANNELS`, `CHUNKED_MIN_INPUT_VALUES`), the weight
gradient ``dW[i, j, c, o] = sum_{n, y, x} xpad[n, y + i, x + j, c] * dy[n, y, x, o]``
as chunked im2col + GEMM: XLA's CPU backend lowers that gradient to a
convolution whose window is the whole image and whose contracted feature
axis is the batch (a handful of elements), 4-10x below the machine's matrix
multiply rate at PA-ResSeg's spatial sizes. Here it is a loop over chunks of
output rows of one image: each chunk's patches (rows * width, kh * kw * C)
are built while they fit in cache and multiplied with the chunk's ``dy`` in
one GEMM, accumulated in float32 (float64 for float64 inputs). On other
backends (GPU: cuDNN) XLA's convolutions and gradients are kept.

`conv_impl("direct")` turns Winograd off and `conv_impl("xla")` both while a
function is traced, which is how the benchmarks time them side by side.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from paresseg_jax.ops import winograd

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Patch bytes per chunk: large enough for an efficient GEMM, small enough to
# stay in the last-level cache while the patches are built and consumed.
PATCH_BYTES = 4 << 20

Padding = Union[str, int, Sequence[Sequence[int]]]
# Winograd on CPU where measured faster in PA-ResSeg's train step (BENCHMARKS.md): few channels leave
# the transforms' memory traffic larger than the multiplies saved, few tiles the kernel transforms.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_TILES = 64
# The chunked weight gradient where measured faster than XLA's (weight gradient alone, batch 8): from 32
# output channels and 2**16 input values per image (64 -> 64 at 32 px 1.8x, 32 -> 32 at 64 px 1.9x,
# 3 -> 64 at 224 px 2.8x); below, XLA's is as fast or faster (16 -> 16 at 224 px 1.1x, 32 -> 32 at 32 px
# 2.3x, 256 -> 256 at 14 px 1.3x) and compiles without a loop per layer (a width-4 ResSeg gradient: 1.8x faster).
CHUNKED_MIN_OUT_CHANNELS = 32
CHUNKED_MIN_INPUT_VALUES = 1 << 16
CONV_IMPLS = ("fast", "direct", "xla")
_CONV_IMPL = contextvars.ContextVar("paresseg_conv_impl", default="fast")


@contextlib.contextmanager
def conv_impl(impl: str):
    """Within the block, functions traced compute conv2d on CPU with `impl`: 'fast' (the
    default: Winograd where it applies, else XLA's convolution with the chunked weight
    gradient), 'direct' (never Winograd) or 'xla' (plain `lax.conv_general_dilated`, no
    custom VJP).

    The switch acts at trace time and jax caches traces per function, so jit a
    function created inside the block (a `jax.jit` traced before keeps its choice).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl({impl!r}): choose one of {CONV_IMPLS}")
    token = _CONV_IMPL.set(impl)
    try:
        yield
    finally:
        _CONV_IMPL.reset(token)


def current_conv_impl() -> str:
    """The `conv_impl` that functions traced now use (what a cache of traced functions must key on)."""
    return _CONV_IMPL.get()


def _explicit_padding(padding: Padding, kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """'SAME' | 'VALID' | int | ((top, bottom), (left, right)) -> explicit pairs."""
    kh, kw = kernel_size
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
        raise ValueError(f"padding={padding!r}: use 'SAME', 'VALID', an int or ((top, bottom), (left, right))")
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    pairs = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"padding={padding!r}: give ((top, bottom), (left, right))")
    return pairs  # type: ignore[return-value]


def _accumulator_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMENSION_NUMBERS)


def _rows_per_chunk(rows: int, row_bytes: int, budget: int) -> int:
    """Largest row count whose patches fit `budget`, preferring a divisor of `rows`."""
    limit = max(1, min(rows, budget // max(row_bytes, 1)))
    divisor = max(r for r in range(1, limit + 1) if rows % r == 0)
    return divisor if 2 * divisor >= limit else limit


def conv_weight_grad(x, dy, kernel_shape, padding, budget: int = PATCH_BYTES):
    """dW of a stride-1 NHWC/HWIO convolution as chunked im2col + GEMM.

    `x` is the convolution's input, `dy` the cotangent of its output,
    `padding` explicit ((top, bottom), (left, right)). Returns `kernel_shape`
    in the accumulator dtype (float32, or float64 for float64 inputs).
    """
    kh, kw, cin, cout = kernel_shape
    n, _, _, _ = x.shape
    _, ho, wo, _ = dy.shape
    acc_dtype = _accumulator_dtype(x.dtype)
    if kh == kw == 1 and padding == ((0, 0), (0, 0)):
        return lax.dot_general(x.reshape(-1, cin), dy.reshape(-1, cout), (((0,), (0,)), ((), ())),
                               preferred_element_type=acc_dtype).reshape(kernel_shape)
    rows = _rows_per_chunk(ho, wo * kh * kw * cin * x.dtype.itemsize, budget)
    chunks = -(-ho // rows)
    extra = chunks * rows - ho  # zero rows of dy contribute nothing
    xp = jnp.pad(x, ((0, 0), (padding[0][0], padding[0][1] + extra), padding[1], (0, 0)))
    if extra:
        dy = jnp.pad(dy, ((0, 0), (0, extra), (0, 0), (0, 0)))
    width = xp.shape[2]

    def accumulate(step, acc):
        image, chunk = step // chunks, step % chunks
        top = chunk * rows
        # 3-D window and taps: 6-18% faster here than slicing the 4-D (1, rows, width, cin) block
        window = lax.dynamic_slice(xp, (image, top, 0, 0), (1, rows + kh - 1, width, cin))[0]
        patches = jnp.concatenate([window[i:i + rows, j:j + wo] for i in range(kh) for j in range(kw)], axis=-1)
        grads = lax.dynamic_slice(dy, (image, top, 0, 0), (1, rows, wo, cout))
        # (cout, taps * cin): contracting both operands' leading axis was the
        # fastest orientation of XLA's CPU GEMM here.
        return acc + lax.dot_general(grads.reshape(rows * wo, cout), patches.reshape(rows * wo, kh * kw * cin),
                                     (((0,), (0,)), ((), ())), preferred_element_type=acc_dtype)

    acc = lax.fori_loop(0, n * chunks, accumulate, jnp.zeros((cout, kh * kw * cin), acc_dtype))
    return acc.T.reshape(kernel_shape)


def _xla_weight_grad(x, dy, kernel_shape, padding):
    kernel = jnp.zeros(kernel_shape, x.dtype)
    _, pullback = jax.vjp(lambda k: _conv(x, k, padding), kernel)
    return pullback(dy)[0].astype(_accumulator_dtype(x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, kernel, padding):
    return _conv(x, kernel, padding)


def _conv2d_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, dy):
    x, kernel = residuals
    _, pullback = jax.vjp(lambda v: _conv(v, kernel, padding), x)
    dx = pullback(dy)[0]
    if _chunked_grad_pays(x, kernel):
        dw = lax.platform_dependent(
            x, dy, cpu=lambda a, b: conv_weight_grad(a, b, kernel.shape, padding),
            default=lambda a, b: _xla_weight_grad(a, b, kernel.shape, padding))
    else:
        dw = _xla_weight_grad(x, dy, kernel.shape, padding)
    return dx, dw.astype(kernel.dtype)


def _chunked_grad_pays(x, kernel) -> bool:
    """A 1x1 kernel's gradient is one GEMM (16x XLA's at 112 px); larger ones are chunked only where it pays."""
    _, h, w, cin = x.shape
    return kernel.shape[:2] == (1, 1) or (kernel.shape[3] >= CHUNKED_MIN_OUT_CHANNELS
                                          and h * w * cin >= CHUNKED_MIN_INPUT_VALUES)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _winograd_pays(x, kernel, pads) -> bool:
    n, h, w, _ = x.shape
    return (kernel.shape[:2] == (3, 3) and pads == ((1, 1), (1, 1)) and h % 2 == 0 and w % 2 == 0
            and min(kernel.shape[2:]) >= WINOGRAD_MIN_CHANNELS and n * (h // 2) * (w // 2) >= WINOGRAD_MIN_TILES
            and x.dtype in (jnp.float32, jnp.float64) and kernel.dtype == x.dtype)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, padding: Padding = "SAME") -> jax.Array:
    """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (+ `bias`).

    The values of ``lax.conv_general_dilated(x, kernel, (1, 1), padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` up to float rounding; see
    the module docstring for how it and its gradients are computed on CPU.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d takes NHWC x and HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"x has {x.shape[-1]} channels but kernel {kernel.shape} expects {kernel.shape[2]}")
    pads = _explicit_padding(padding, kernel.shape[:2])
    impl = current_conv_impl()
    if impl == "xla":
        y = _conv(x, kernel, pads)
    elif impl == "fast" and _winograd_pays(x, kernel, pads):
        y = lax.platform_dependent(x, kernel, cpu=winograd.conv3x3, default=lambda a, b: _conv2d(a, b, pads))
    else:
        y = _conv2d(x, kernel, pads)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
