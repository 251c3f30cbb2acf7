"""Building blocks in the PyTorch reference's layout, channels-last.

Submodule names are the reference's `state_dict` path segments ('0', '1',
'bn', 'residual', 'deconv'), so converting weights is a rename plus a
transpose: conv kernels are HWIO (torch `(out, in, kh, kw)` -> `(kh, kw, in,
out)`), transposed-conv kernels are `(kh, kw, in, out)` from torch's
`(in, out, kh, kw)`, BatchNorm `weight` -> `scale`. Initialisers follow
torch's defaults so a fresh model starts from the same distribution as the
reference.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from paresseg_jax import ops

# The up path of the reference: every scale ends with this many channels.
UP_CHANNELS = 16


def _uniform(bound: float):
    """torch's default init for conv weights and biases: U(-bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch semantics (eps 1e-5, momentum 0.1).

    Train mode normalises with the biased batch variance and moves the
    running variance towards the unbiased one (n / (n - 1)), as torch does;
    `num_batches_tracked` counts train calls. With `axis_name` the batch
    statistics are averaged over replicas (pmap): first the mean, then the
    mean of squared deviations from that global mean, which equals the
    global variance when replicas hold equal batch shares.
    """

    axis_name: Optional[str] = None
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        tracked = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            reduce_axes = tuple(range(x.ndim - 1))
            count = math.prod(x.shape[:-1])
            mean = jnp.mean(x32, axis=reduce_axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count *= jax.lax.axis_size(self.axis_name)
            if count < 2:
                raise ValueError(
                    f"BatchNorm in train mode needs more than one value per channel, got input shape "
                    f"{x.shape}; use a larger batch or crop, or train=False")
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (count / (count - 1))
                tracked.value = tracked.value + 1
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


class Conv(nn.Module):
    """Conv2d, stride 1, 'same' zero padding (odd kernels), HWIO kernel.

    Runs through `ops.conv2d`: XLA's convolution, with a faster weight
    gradient on CPU (BENCHMARKS.md).
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        bound = 1.0 / math.sqrt(cin * k * k)
        kernel = self.param("kernel", _uniform(bound), (k, k, cin, self.features), jnp.float32)
        pad = k // 2
        y = ops.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), padding=((pad, pad), (pad, pad)))
        if self.use_bias:
            y = y + self.param("bias", _uniform(bound), (self.features,), jnp.float32).astype(self.dtype)
        return y


class ConvTranspose(nn.Module):
    """ConvTranspose2d(kernel k, stride s, padding p) exactly as torch computes it.

    Kernel layout `(kh, kw, in, out)`: `kernel[i, j, a, b] == torch_weight[a,
    b, i, j]` (torch stores `(in, out, kh, kw)`), not flipped. The transposed
    conv is the stride-1 conv of the s-dilated input with the spatially
    flipped kernel and padding k - 1 - p, giving H_out = (H - 1) s - 2p + k
    (k=4, s=2, p=1 exactly doubles H, W).

    When H_out = s H (k - 2p = s, every model here) it runs as s x s small
    stride-1 convolutions of the input, one per output phase, interleaved
    (sub-pixel form): no multiplications by the dilation's zeros, and XLA
    CPU's weight gradient of the dilated form ran at 2-4 GFLOP/s.
    """

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        # torch computes the transposed conv's fan-in from weight dim 1 (out channels).
        bound = 1.0 / math.sqrt(self.features * k * k)
        kernel = self.param("kernel", _uniform(bound), (k, k, cin, self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k - 2 * self.padding == self.stride:
            y = self._sub_pixel(x, kernel)
        else:
            edge = k - 1 - self.padding
            y = jax.lax.conv_general_dilated(
                x, kernel[::-1, ::-1], (1, 1), ((edge, edge), (edge, edge)),
                lhs_dilation=(self.stride, self.stride), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", _uniform(bound), (self.features,), jnp.float32).astype(self.dtype)
        return y

    def _phase_taps(self, phase: int) -> tuple[list[int], tuple[int, int]]:
        """Kernel taps (in correlation order) and (before, after) padding of output phase `phase`.

        Output index s*m + phase receives input m + d - t through tap q + s*t (t = 0, 1, ...),
        q = (phase + p) mod s, d = (phase + p - q) / s.
        """
        s, p = self.stride, self.padding
        q = (phase + p) % s
        taps = list(range(q, self.kernel_size, s))
        d = (phase + p - q) // s
        return taps[::-1], (len(taps) - 1 - d, d)

    def _sub_pixel(self, x, kernel):
        n, h, w, _ = x.shape
        s = self.stride
        taps = [self._phase_taps(phase) for phase in range(s)]  # the same for rows and columns
        rows = []
        for row_taps, row_pad in taps:
            phases = [ops.conv2d(x, kernel[jnp.array(row_taps)][:, jnp.array(col_taps)], padding=(row_pad, col_pad))
                      for col_taps, col_pad in taps]
            rows.append(jnp.stack(phases, axis=3))  # [n, h, w, s (column phase), out]
        return jnp.stack(rows, axis=2).reshape(n, h * s, w * s, self.features)


class ConvBNReLU(nn.Module):
    """Sequential[0 conv, 1 BN, 2 ReLU]: `up1`, the fusion head's convs, and
    (with `transpose`) the inside of a reference `Deconv`."""

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    transpose: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        if self.transpose:
            x = ConvTranspose(self.features, self.kernel_size, use_bias=self.use_bias, dtype=self.dtype, name="0")(x)
        else:
            x = Conv(self.features, self.kernel_size, self.use_bias, self.dtype, name="0")(x)
        x = BatchNorm(self.bn_axis_name, dtype=self.dtype, name="1")(x, train)
        return nn.relu(x)


class ConvBNConvBN(nn.Module):
    """Sequential[0 conv3x3, 1 BN, 2 ReLU, 3 conv3x3, 4 BN]: a ResBlock's `bn`
    branch; followed by a ReLU it is the stem `first` (and a UNet double conv)."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(self.features, 3, self.use_bias, self.dtype, name="0")(x)
        x = nn.relu(BatchNorm(self.bn_axis_name, dtype=self.dtype, name="1")(x, train))
        x = Conv(self.features, 3, self.use_bias, self.dtype, name="3")(x)
        return BatchNorm(self.bn_axis_name, dtype=self.dtype, name="4")(x, train)


class Projection(nn.Module):
    """Sequential[0 conv1x1 without bias, 1 BN]: a ResBlock's `residual`."""

    features: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(self.features, 1, False, self.dtype, name="0")(x)
        return BatchNorm(self.bn_axis_name, dtype=self.dtype, name="1")(x, train)


class ResBlock(nn.Module):
    """ReLU(bn(x) + residual(x)); the residual is a 1x1 projection only when
    the channel count changes."""

    features: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
        y = ConvBNConvBN(self.features, name="bn", **kw)(x, train)
        if x.shape[-1] != self.features:
            x = Projection(self.features, name="residual", **kw)(x, train)
        return nn.relu(y + x.astype(y.dtype))


class Deconv(nn.Module):
    """The reference's `Deconv`: `deconv` = [0 ConvTranspose k4 s2 p1 (no
    bias), 1 BN, 2 ReLU]; doubles H and W."""

    features: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        return ConvBNReLU(self.features, 4, use_bias=False, transpose=True, dtype=self.dtype,
                          bn_axis_name=self.bn_axis_name, name="deconv")(x, train)


class UpPath(nn.Module):
    """`upk` for k >= 2: k - 1 Deconvs with 16 * 2^(k-2), ..., 32, 16 output
    channels, bringing scale k back to full resolution."""

    depth: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        for i in range(self.depth):
            features = UP_CHANNELS * 2 ** (self.depth - 1 - i)
            x = Deconv(features, self.dtype, self.bn_axis_name, name=str(i))(x, train)
        return x


class SegmentationHead(nn.Module):
    """`final` = [0 conv3x3 (96 -> 96), 1 BN, 2 ReLU, 3 conv1x1 -> classes]."""

    num_classes: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        channels = x.shape[-1]
        x = Conv(channels, 3, True, self.dtype, name="0")(x)
        x = nn.relu(BatchNorm(self.bn_axis_name, dtype=self.dtype, name="1")(x, train))
        return Conv(self.num_classes, 1, True, self.dtype, name="3")(x)


def max_pool(x):
    """MaxPool 2x2, stride 2 (inputs are padded to multiples of 32, so the
    reference's ceil_mode never applies); `ops.max_pool` for its fast gradient."""
    return ops.max_pool(x, 2)
