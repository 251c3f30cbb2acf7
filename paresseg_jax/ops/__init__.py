"""Hand-tuned operations where XLA's default lowering is slow on some backend.

`conv2d` is a stride-1 NHWC convolution whose weight gradient on CPU is a
chunked im2col + matrix multiply: XLA's CPU backend otherwise computes that
gradient as a convolution with a window the size of the image, at a fraction
of the speed of its forward convolution (see BENCHMARKS.md). `max_pool` is a
non-overlapping max pooling whose gradient is an elementwise mask instead of
XLA's select-and-scatter.
"""

from paresseg_jax.ops.conv import conv2d, conv_weight_grad, weight_grad
from paresseg_jax.ops.pool import max_pool

__all__ = ["conv2d", "conv_weight_grad", "max_pool", "weight_grad"]
