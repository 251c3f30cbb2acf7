"""The ResSeg backbone and its fusion strategies (paper Sec. 2, Tables 4 and 6).

- `ResSeg` = reference `RESNET_2D`: six-scale residual encoder, each scale
  brought to full size with 16 channels, 96 channels into the head. Given
  several phases it stacks them on channels (DMP, early fusion); given
  `fusion` it puts that block on every scale of PV alone (Table 4 row 2
  with 'intra').
- `MSFResSeg` = reference `RESNET_phase_att` when `fusion='pa'`: one encoder
  per phase, a fusion block per scale, shared decoder.
- `MPFResSeg`: one ResSeg per phase, logits added (late fusion).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from paresseg_jax.models.base import SegmentationModel
from paresseg_jax.models.fusion import encoder_name, fuse_scales
from paresseg_jax.models.layers import (UP_CHANNELS, ConvBNConvBN, ConvBNReLU, ResBlock, SegmentationHead, UpPath,
                                        max_pool)
from paresseg_jax.models.registry import register_model

# (name, channels as a multiple of width) of the five pooled encoder levels.
ENCODER_LEVELS = (("second", 2), ("third", 4), ("fourth", 8), ("fifth", 8), ("sixth", 8))


def residual_encoder(x, width: int, train: bool, layer_options: dict, levels: tuple = (0, 6)) -> list:
    """Six scales of features (full, /2, ..., /32), built in the calling
    module's scope with the reference's names (`first`, `second_1`, ...).
    `levels = (start, stop)` builds only scales start..stop-1, `x` being
    scale start-1's features (the exact ROI crop runs the fine scales on a
    crop and the deep ones on the whole slice: `infer.exact_crop`)."""
    features = []
    for level in range(*levels):
        if level == 0:
            x = nn.relu(ConvBNConvBN(width, name="first", **layer_options)(x, train))
        else:
            name, multiple = ENCODER_LEVELS[level - 1]
            x = max_pool(x)
            x = ResBlock(width * multiple, name=f"{name}_1", **layer_options)(x, train)
            x = ResBlock(width * multiple, name=f"{name}_2", **layer_options)(x, train)
        features.append(x)
    return features


def multi_scale_decoder(features, num_classes: int, train: bool, layer_options: dict):
    """`up1`..`up6` (any input channels) and `final`, in the calling module's scope."""
    maps = [ConvBNReLU(UP_CHANNELS, name="up1", **layer_options)(features[0], train)]
    for k, scale in enumerate(features[1:], start=2):
        maps.append(UpPath(k - 1, name=f"up{k}", **layer_options)(scale, train))
    return SegmentationHead(num_classes, name="final", **layer_options)(jnp.concatenate(maps, axis=-1), train)


class ResEncoder(nn.Module):
    """The reference's `ResEncoder`: one phase's encoder as a submodule (scales `levels`, see
    `residual_encoder`). Applied to a ResSeg's own variables it is that model's encoder."""

    width: int
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    levels: tuple = (0, 6)

    @nn.compact
    def __call__(self, x, train: bool):
        return residual_encoder(x, self.width, train, dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name),
                                self.levels)


class FeatureDecoder(SegmentationModel):
    """What a ResSeg or MSF-ResSeg computes after its encoders, with the model's names: the fusion
    blocks (if any) on the whole features, one list of six scales per encoder, then the decoder on
    the window ``(origin, (height, width))`` of them (input px; origin on the /32 grid; None: whole)."""

    @nn.compact
    def __call__(self, *per_encoder, window=None, train: bool = False):
        features = per_encoder[0] if self.fusion is None else fuse_scales(self, list(per_encoder), train)
        if window is not None:
            (row, col), (height, width) = window
            features = [jax.lax.dynamic_slice(f, (0, row // 2**s, col // 2**s, 0),
                                              (f.shape[0], height // 2**s, width // 2**s, f.shape[3]))
                        for s, f in enumerate(features)]
        return multi_scale_decoder(features, self.num_classes, train, self.layer_options)


@register_model("dmp_resseg", phases=("pv", "art"))
@register_model("resseg")
class ResSeg(SegmentationModel):
    """Single-branch ResSeg; with several phases, DMP (phases stacked at the input)."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        padded = self.padded_inputs(inputs)
        features = residual_encoder(jnp.concatenate(padded, axis=-1), self.width, train, self.layer_options)
        if self.fusion is not None:
            features = fuse_scales(self, [features], train)
        logits = multi_scale_decoder(features, self.num_classes, train, self.layer_options)
        return self.cropped_logits(logits, inputs[0])


@register_model("paresseg", fusion="pa", phases=("pv", "art"))
@register_model("msf_resseg", fusion="concat", phases=("pv", "art"))
class MSFResSeg(SegmentationModel):
    """Multi-scale fusion: an encoder per phase, `fusion` at each of the six
    scales, shared decoder. With 'pa' this is PA-ResSeg."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        padded = self.padded_inputs(inputs)
        per_phase = [ResEncoder(self.width, name=encoder_name(p), **self.layer_options)(x, train)
                     for p, x in zip(self.phases, padded)]
        features = fuse_scales(self, per_phase, train)
        logits = multi_scale_decoder(features, self.num_classes, train, self.layer_options)
        return self.cropped_logits(logits, inputs[0])


@register_model("mpf_resseg", phases=("pv", "art"))
class MPFResSeg(SegmentationModel):
    """Multi-phase fusion at the output: one ResSeg per phase (`PV_net`,
    `ART_net`, ...), logits added. Trained jointly on the summed logits."""

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        self.check_inputs(inputs)
        options = dict(in_channels=self.in_channels, width=self.width, num_classes=self.num_classes,
                       attention=self.attention, precise_attention=self.precise_attention, fusion=self.fusion,
                       **self.layer_options)
        return sum(ResSeg(phases=(p,), name=f"{p.upper()}_net", **options)(x, train=train)
                   for p, x in zip(self.phases, inputs))
