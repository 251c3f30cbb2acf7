"""3x3 'SAME' convolution by Winograd's minimal filtering F(2x2, 3x3), for the CPU.

A direct 3x3 convolution spends 9 multiplies per output pixel and channel
pair; F(2x2, 3x3) spends 16 per 2x2 output tile, i.e. 4 (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016). Each 4x4 input
tile (stride 2, over the input padded by 1) is transformed to ``B^T d B``,
each kernel to ``G g G^T``; the 16 tile positions then are 16 independent
matrix multiplies over channels (one batched GEMM), and ``A^T m A`` brings
each 4x4 product back to a 2x2 output tile. The transforms use only adds,
subtracts and halvings, so in float32 the result differs from a direct
convolution by a few units of rounding, like any other summation order.

The backward pass stays in the transformed domain: ``A dy A^T`` per output
tile feeds both the kernel gradient (a batched GEMM over tiles, then
``G^T . G``) and the input gradient (a batched GEMM with the transformed
kernel, then ``B . B^T`` and an overlap-add of the 4x4 tiles), so neither
needs XLA's flipped-kernel convolution nor an im2col.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# positions of the 4x4 transformed tile, row-major: (a, b) -> 4 * a + b
_TILE = 4
# dot_general dimension numbers over (16, tiles, channels) operands
_TILES_BY_KERNEL = (((2,), (1,)), ((0,), (0,)))  # (16, T, ci) x (16, ci, co) -> (16, T, co)
_TILES_BY_KERNEL_T = (((2,), (2,)), ((0,), (0,)))  # (16, T, co) x (16, ci, co) -> (16, T, ci)
_TILES_BY_TILES = (((1,), (1,)), ((0,), (0,)))  # (16, T, ci) x (16, T, co) -> (16, ci, co)


def _stack16(planes: list) -> jax.Array:
    """The 16 tile positions' planes as one (16, ...) array, stacked in groups of 4: XLA CPU leaves a
    16-operand concatenate unfused (a copy after 16 fusions), four of four it fuses (1.7-1.9x faster)."""
    groups = [jnp.stack(planes[k:k + _TILE]) for k in range(0, 16, _TILE)]
    return jnp.stack(groups).reshape(16, *planes[0].shape)


def _separable(transform, planes):
    """Apply a 1-D `transform` (list of planes -> list of planes) along both tile axes of
    `planes[i][j]` (nested lists, or an array with the two tile axes leading); returns the
    flat row-major list of the results."""
    cols = [transform([planes[i][j] for i in range(len(planes))]) for j in range(len(planes[0]))]
    return [v for a in range(len(cols[0])) for v in transform([col[a] for col in cols])]


def _interleave(planes: list, shape: tuple[int, int, int, int]) -> jax.Array:
    """Four NHWC planes at half resolution, ``planes[2 * a + b]`` holding pixels ``(2 r + a, 2 s + b)``,
    as one NHWC array of `shape`."""
    return jnp.stack([jnp.stack(planes[2 * a:2 * a + 2], axis=3) for a in range(2)], axis=2).reshape(shape)


# The 1-D transforms as plane arithmetic (Lavin & Gray's B^T, G, A^T and their transposes).
def _input_1d(d):  # B^T: 4 -> 4
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _input_grad_1d(u):  # B: 4 -> 4
    return [u[0], u[1] - u[2] + u[3], u[1] + u[2] - u[0], -u[3]]


def _kernel_1d(g):  # G: 3 -> 4
    outer = g[0] + g[2]
    return [g[0], 0.5 * (outer + g[1]), 0.5 * (outer - g[1]), g[2]]


def _kernel_grad_1d(m):  # G^T: 4 -> 3
    inner = 0.5 * (m[1] + m[2])
    return [m[0] + inner, 0.5 * (m[1] - m[2]), inner + m[3]]


def _output_1d(m):  # A^T: 4 -> 2
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _output_grad_1d(y):  # A: 2 -> 4
    return [y[0], y[0] + y[1], y[0] - y[1], -y[1]]


def input_tiles(x: jax.Array) -> jax.Array:
    """NHWC `x` (H, W even) -> ``(16, N * H/2 * W/2, C)``: ``B^T d B`` of each 4x4 tile of the 1-padded input."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    tiles = [[xp[:, i:i + h:2, j:j + w:2] for j in range(_TILE)] for i in range(_TILE)]
    return _stack16(_separable(_input_1d, tiles)).reshape(16, -1, c)


def kernel_tiles(kernel: jax.Array) -> jax.Array:
    """HWIO 3x3 `kernel` -> ``(16, I, O)``: ``G g G^T``."""
    return _stack16(_separable(_kernel_1d, kernel))


def output_tiles(m: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    """``(16, T, O)`` products -> NHWC output of `shape`: ``A^T m A`` per tile, tiles interleaved."""
    n, h, w, co = shape
    return _interleave(_separable(_output_1d, m.reshape(_TILE, _TILE, n, h // 2, w // 2, co)), shape)


def output_grad_tiles(dy: jax.Array) -> jax.Array:
    """NHWC `dy` -> ``(16, T, O)``: ``A dy A^T`` per 2x2 output tile (the transpose of `output_tiles`)."""
    n, h, w, co = dy.shape
    tiles = dy.reshape(n, h // 2, 2, w // 2, 2, co)
    return _stack16(_separable(_output_grad_1d, [[tiles[:, :, a, :, b] for b in range(2)] for a in range(2)])
                    ).reshape(16, -1, co)


def _from_previous(t: jax.Array, axis: int) -> jax.Array:
    """Along tile `axis`: tile r - 1's value at tile r (zero at the first)."""
    lead = lax.slice_in_dim(t, 0, t.shape[axis] - 1, axis=axis)
    return jnp.concatenate([jnp.zeros_like(lax.slice_in_dim(t, 0, 1, axis=axis)), lead], axis=axis)


def _from_next(t: jax.Array, axis: int) -> jax.Array:
    """Along tile `axis`: tile r + 1's value at tile r (zero at the last)."""
    tail = lax.slice_in_dim(t, 1, t.shape[axis], axis=axis)
    return jnp.concatenate([tail, jnp.zeros_like(lax.slice_in_dim(t, 0, 1, axis=axis))], axis=axis)


# Output pixel 2r + e is padded pixel 2r + e + 1, which 4x4 tiles starting every 2 pixels cover twice:
# e = 0 as row 1 of tile r and row 3 of tile r - 1, e = 1 as row 2 of tile r and row 0 of tile r + 1.
_OVERLAPS = ((1, 3, _from_previous), (2, 0, _from_next))


def input_grad(du: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    """``(16, T, C)`` tile gradients -> NHWC gradient of the input (the transpose of `input_tiles`):
    ``B du B^T`` gives each 4x4 tile's gradient, and each pixel sums the tiles that cover it.
    Built per output parity from shifted tiles (2.4x faster here than padding and cropping)."""
    n, h, w, c = shape
    grads = _separable(_input_grad_1d, du.reshape(_TILE, _TILE, n, h // 2, w // 2, c))

    def rows(e: int, b: int) -> jax.Array:  # output rows of parity e, from tile column b
        own, other, shift = _OVERLAPS[e]
        return grads[_TILE * own + b] + shift(grads[_TILE * other + b], 1)

    def pixels(e: int, f: int) -> jax.Array:  # output pixels (2r + e, 2s + f)
        own, other, shift = _OVERLAPS[f]
        return rows(e, own) + shift(rows(e, other), 2)

    return _interleave([pixels(e, f) for e in range(2) for f in range(2)], shape)


def _forward(x, kernel):
    u, kt = input_tiles(x), kernel_tiles(kernel)
    m = lax.dot_general(u, kt, _TILES_BY_KERNEL, preferred_element_type=x.dtype)
    return output_tiles(m, x.shape[:3] + kernel.shape[3:]), (u, kt)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', ('NHWC', 'HWIO', 'NHWC'))`` for a
    3x3 `kernel` and even H and W, computed with F(2x2, 3x3)."""
    return _forward(x, kernel)[0]


def _conv3x3_bwd(residuals, dy):
    u, kt = residuals  # the transformed input and kernel, as the forward pass made them
    dm = output_grad_tiles(dy)
    dkt = lax.dot_general(u, dm, _TILES_BY_TILES, preferred_element_type=u.dtype).reshape(_TILE, _TILE, *kt.shape[1:])
    du = lax.dot_general(dm, kt, _TILES_BY_KERNEL_T, preferred_element_type=dy.dtype)
    taps = _separable(_kernel_grad_1d, dkt)
    dkernel = jnp.stack([jnp.stack(taps[3 * i:3 * i + 3]) for i in range(3)])  # rows of 3: fused, see _stack16
    return input_grad(du, dy.shape[:3] + u.shape[2:]), dkernel


conv3x3.defvjp(_forward, _conv3x3_bwd)
