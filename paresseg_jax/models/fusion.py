"""Fusion blocks: how one scale's PV features meet the other phases' features.

A fusion block is a `FusionBlock` subclass called as
`block(pv_features, [other_phase_features, ...], train) -> fused`
(`fusion_block.FusionCall`), registered by name or named by its import
path (`my_package.blocks:MyBlock`); the multi-scale-fusion (MSF) models put one per scale
and the decoder adapts to whatever channel count comes out. Every block
accepts any number of other phases (zero included: then it acts on PV alone,
which is how single-phase ResSeg gets its intra-PA).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from paresseg_jax.models.attention import InterPhaseAttention, IntraPhaseAttention
from paresseg_jax.models.fusion_block import FusionBlock
from paresseg_jax.models.registry import fusion_block, register_fusion_block


def _head_channels(pv) -> int:
    inter = pv.shape[-1] // 4
    if inter < 1:
        raise ValueError(f"the phase-attention head needs at least 4 input channels, got {pv.shape[-1]}; "
                         f"use width >= 4")
    return inter


def _suffix(k: int) -> str:
    """Names of the k-th other phase's layers: the reference's for the first
    (ART), then '_1', '_2', ... for extra phases."""
    return "" if k == 0 else f"_{k}"


def _intra_phase_branch(block: FusionBlock, pv, train: bool):
    """The PV branch shared by the PA and intra blocks: conv5c -> intra-PA (`sc`) -> conv51.

    Returns (inter channels, conv5c features, [PV branch output]); called
    inside the block's compact `__call__`, so the layers belong to it.
    """
    inter = _head_channels(pv)
    pv_features = block.conv(inter, "conv5c")(pv, train)
    attended = IntraPhaseAttention(block.attention, block.dtype, block.precise_attention, name="sc")(pv_features)
    return inter, pv_features, [block.conv(inter, "conv51")(attended, train)]


@register_fusion_block("pa")
class PhaseAttentionBlock(FusionBlock):
    """The PA block (reference `FANetHead(C)`), inter = C // 4 channels.

    PV: conv5c -> intra-PA (`sc`) -> conv51. Each other phase: conv5p ->
    inter-PA (`pa`) against the PV branch's conv5c features -> conv52.
    Output: the branches concatenated, C / 2 channels with two phases.
    """

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        inter, pv_features, branches = _intra_phase_branch(self, pv, train)
        for k, other in enumerate(others):
            s = _suffix(k)
            other_features = self.conv(inter, "conv5p" + s)(other, train)
            attended = InterPhaseAttention(self.attention, self.dtype, self.precise_attention, name="pa" + s)(pv_features, other_features)
            branches.append(self.conv(inter, "conv52" + s)(attended, train))
        return jnp.concatenate(branches, axis=-1)


@register_fusion_block("intra")
class IntraPhaseAttentionBlock(FusionBlock):
    """The PA block without inter-PA (Table 4, 'MSF + intra-PA'): PV through
    conv5c -> sc -> conv51, each other phase through conv5p -> conv52."""

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        inter, _, branches = _intra_phase_branch(self, pv, train)
        for k, other in enumerate(others):
            s = _suffix(k)
            branches.append(self.conv(inter, "conv52" + s)(self.conv(inter, "conv5p" + s)(other, train), train))
        return jnp.concatenate(branches, axis=-1)


@register_fusion_block("concat")
class ConcatBlock(FusionBlock):
    """MSF-ResSeg / MSF-UNet: the phases' features concatenated on channels."""

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        return jnp.concatenate([pv, *others], axis=-1)


@register_fusion_block("sum")
class SumBlock(FusionBlock):
    """The phases' features added."""

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        return sum(others, pv)


@register_fusion_block("weighted")
class WeightedSumBlock(FusionBlock):
    """MW-UNet's modality weighting: sum_k w_k f_k with learnable phase
    weights `phase_weights` (order: PV, then the others), initialised to
    1 / number of phases (0.5, 0.5 for PV and ART, as the paper used)."""

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        features = [pv, *others]
        n = len(features)
        weights = self.param("phase_weights", nn.initializers.constant(1.0 / n), (n,), jnp.float32)
        return sum(w.astype(self.dtype) * f for w, f in zip(weights, features))


def fuse_scales(model, per_phase_features, train: bool) -> list:
    """One `model.fusion` block per scale (`cf1`, `cf2`, ...), PV against the
    other phases, built in the calling model's scope. `per_phase_features`:
    one list of scales per phase, PV first."""
    block = fusion_block(model.fusion)
    pv, *others = per_phase_features
    return [block(attention=model.attention, precise_attention=model.precise_attention, name=f"cf{k}", **model.layer_options)(f, [o[k - 1] for o in others], train)
            for k, f in enumerate(pv, start=1)]


def encoder_name(phase: str) -> str:
    """One encoder per phase: `PV_encoder`, `ART_encoder`, ... as in the reference."""
    return f"{phase.upper()}_encoder"
