"""The UNet backbone of Table 5 and MW-UNet of Table 7.

A standard UNet (Ronneberger et al. 2015) with BatchNorm: double 3x3 convs
at width, 2, 4, 8, 16 x width, 2x2 max pooling, 2x2 transposed-conv
up-sampling and skip concatenation. `UNet` stacks several phases at the
input (and, with `fusion`, puts the block on each level of PV alone);
`MSFUNet` has one encoder per phase and a fusion block at each of the five
encoder levels, whose outputs feed the shared decoder as skips and
bottleneck: 'concat' = MSF-UNet, 'pa' = PA-UNet, 'weighted' = MW-UNet
(Wu et al. 2019: features of the phases summed with learnable weights,
initialised to 0.5 / 0.5, at every level).
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from paresseg_jax.models.base import SegmentationModel
from paresseg_jax.models.fusion import encoder_name, fuse_scales
from paresseg_jax.models.layers import Conv, ConvBNConvBN, ConvTranspose, max_pool
from paresseg_jax.models.registry import register_model

LEVELS = 5


def unet_encoder(x, width: int, train: bool, layer_options: dict) -> list:
    """Five levels of features (`inc`, `down1`..`down4`), full to /16 size."""
    features = [nn.relu(ConvBNConvBN(width, use_bias=False, name="inc", **layer_options)(x, train))]
    for level in range(1, LEVELS):
        x = ConvBNConvBN(width * 2 ** level, use_bias=False, name=f"down{level}", **layer_options)(
            max_pool(features[-1]), train)
        features.append(nn.relu(x))
    return features


class UNetUp(nn.Module):
    """2x2 transposed conv (`upconv`), concatenation with the skip, double conv (`conv`)."""

    features: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, skip, train: bool):
        x = ConvTranspose(self.features, 2, 2, 0, use_bias=True, dtype=self.dtype, name="upconv")(x)
        x = jnp.concatenate([skip.astype(x.dtype), x], axis=-1)
        return nn.relu(ConvBNConvBN(self.features, use_bias=False, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                    name="conv")(x, train))


def unet_decoder(features, width: int, num_classes: int, train: bool, layer_options: dict):
    """`up1`..`up4` (skips of any channel count) and the 1x1 classifier `outc`."""
    x = features[-1]
    for j, skip in enumerate(reversed(features[:-1]), start=1):
        x = UNetUp(width * 2 ** (LEVELS - 1 - j), name=f"up{j}", **layer_options)(x, skip, train)
    return Conv(num_classes, 1, True, layer_options["dtype"], name="outc")(x)


class UNetEncoder(nn.Module):
    """One phase's UNet encoder as a submodule."""

    width: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool):
        return unet_encoder(x, self.width, train, dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name))


@register_model("unet")
class UNet(SegmentationModel):
    """Single UNet (Table 5); several phases are stacked at the input."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        padded = self.padded_inputs(inputs)
        features = unet_encoder(jnp.concatenate(padded, axis=-1), self.width, train, self.layer_options)
        if self.fusion is not None:
            features = fuse_scales(self, [features], train)
        logits = unet_decoder(features, self.width, self.num_classes, train, self.layer_options)
        return self.cropped_logits(logits, inputs[0])


@register_model("mw_unet", fusion="weighted", phases=("pv", "art"))
@register_model("pa_unet", fusion="pa", phases=("pv", "art"))
@register_model("msf_unet", fusion="concat", phases=("pv", "art"))
class MSFUNet(SegmentationModel):
    """A UNet encoder per phase, `fusion` at each encoder level, shared decoder."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        padded = self.padded_inputs(inputs)
        per_phase = [UNetEncoder(self.width, name=encoder_name(p), **self.layer_options)(x, train)
                     for p, x in zip(self.phases, padded)]
        features = fuse_scales(self, per_phase, train)
        logits = unet_decoder(features, self.width, self.num_classes, train, self.layer_options)
        return self.cropped_logits(logits, inputs[0])
