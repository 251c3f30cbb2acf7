"""Hand-tuned operations where XLA's default lowering is slow on some backend.

`conv2d` is a stride-1 NHWC convolution that on CPU runs its 3x3 layers with
enough channels as Winograd F(2x2, 3x3) (`winograd`), and the others with a
chunked im2col + matrix multiply weight gradient: XLA's CPU backend otherwise
computes that gradient as a convolution with a window the size of the image,
at a fraction of the speed of its forward convolution (see BENCHMARKS.md).
`max_pool` is a non-overlapping max pooling whose gradient is an elementwise
mask instead of XLA's select-and-scatter.
"""

from paresseg_jax.ops.conv import conv2d, conv_impl, conv_weight_grad, current_conv_impl
from paresseg_jax.ops.pool import max_pool

__all__ = ["conv2d", "conv_impl", "conv_weight_grad", "current_conv_impl", "max_pool"]
