"""Hand-tuned operations where XLA's default lowering is slow on some backend.

`conv2d` is a stride-1 NHWC convolution whose weight gradient on CPU is a
chunked im2col + matrix multiply: XLA's CPU backend otherwise computes that
gradient as a convolution with a window the size of the image, at a fraction
of the speed of its forward convolution (see BENCHMARKS.md).
"""

from paresseg_jax.ops.conv import conv2d, conv_weight_grad, weight_grad

__all__ = ["conv2d", "conv_weight_grad", "weight_grad"]
