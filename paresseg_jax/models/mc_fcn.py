"""MC-FCN (Sun et al. 2017), the multi-channel FCN of Table 7.

An independent FCN-8s-style trunk per phase (five stages of double 3x3
conv + 2x2 max pooling, then two convolutional "fc" layers at 1/32). The
phases meet only in the high-level layers: at each layer the FCN-8s head
reads (pool3, pool4, fc7) the phases' features are fused by `fusion`
(default 'concat'), scored by 1x1 convs and brought to full size with
FCN-8s' transposed convs (x2 `upscore2`, x2 `upscore_pool4`, x8 `upscore8`)
and skip sums.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from paresseg_jax.models.base import SegmentationModel
from paresseg_jax.models.fusion import fuse_scales
from paresseg_jax.models.layers import Conv, ConvBNConvBN, ConvBNReLU, ConvTranspose, max_pool
from paresseg_jax.models.registry import register_model

# (name, channels as a multiple of width) of the five pooled stages.
STAGES = (("conv1", 1), ("conv2", 2), ("conv3", 4), ("conv4", 8), ("conv5", 8))


class FCNTrunk(nn.Module):
    """One phase's FCN: returns its pool3 (/8), pool4 (/16) and fc7 (/32) features."""

    width: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        options = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
        pooled = []
        for name, multiple in STAGES:
            x = max_pool(nn.relu(ConvBNConvBN(self.width * multiple, use_bias=False, name=name, **options)(x, train)))
            pooled.append(x)
        x = ConvBNReLU(self.width * 16, 3, use_bias=False, name="fc6", **options)(x, train)
        x = ConvBNReLU(self.width * 16, 1, use_bias=False, name="fc7", **options)(x, train)
        return [pooled[2], pooled[3], x]


@register_model("mc_fcn", fusion="concat", phases=("pv", "art"))
class MCFCN(SegmentationModel):
    """An FCN per phase (`PV_fcn`, `ART_fcn`, ...), fused at the high-level layers."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        padded = self.padded_inputs(inputs)
        per_phase = [FCNTrunk(self.width, name=f"{p.upper()}_fcn", **self.layer_options)(x, train)
                     for p, x in zip(self.phases, padded)]
        pool3, pool4, fc7 = fuse_scales(self, per_phase, train)
        n, dtype = self.num_classes, self.dtype
        x = ConvTranspose(n, 4, 2, 1, dtype=dtype, name="upscore2")(Conv(n, 1, dtype=dtype, name="score_fr")(fc7))
        x = x + Conv(n, 1, dtype=dtype, name="score_pool4")(pool4)
        x = ConvTranspose(n, 4, 2, 1, dtype=dtype, name="upscore_pool4")(x)
        x = x + Conv(n, 1, dtype=dtype, name="score_pool3")(pool3)
        logits = ConvTranspose(n, 16, 8, 4, dtype=dtype, name="upscore8")(x)
        return self.cropped_logits(logits, inputs[0])
