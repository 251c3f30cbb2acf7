"""Spatial inter-phase attention: PV positions attend to the other phases' positions nearby.

The paper's PA block (Sec. 2.B) relates phases channel by channel, with one
weight per channel for the whole image; its Sec. 4 names spatial
inter-phase correlations as the next step. Here every PV position queries
each other phase (ART, and NC, DL when present) at the positions around it
and takes a softmax-weighted mix of that phase's features.

Why local windows. Full attention between all positions costs N^2 for N
positions: at the finest scale of a 224 px patch N = 50,176, so one map of
weights is 2.5e9 numbers per image and phase, far beyond any device.
What the phases need from each other is local: after registration ART and
PV disagree by a few millimetres (breathing, B-spline residue), and a
lesion's arterial enhancement sits where PV shows the lesion. So a PV
position attends to a `window` x `window` neighbourhood (7 x 7 by default)
of the other phase at the same scale: cost and memory are linear in N
(N x 49 weights). Because the MSF models put the block at all six scales
(full, /2, ..., /32), the same window reaches +-3 px at full resolution
and +-96 px at 1/32, which covers misalignments of 0-10 mm at the
scales where a 224 px patch's features hold them, and is global at the
coarsest scale (7 x 7 positions). Coarse-scales-only full attention would
give up the fine scales where small lesions live; axial attention
(rows and columns) would cost N (H + W), 9x more than 49 per position at
224 px, for long-range pairs misregistration does not need.

Precision. The weights are computed without matrix multiplications:
for each of the window's offsets the logits are a product and a sum over
channels, and the output a weighted sum of shifted features. These run in
float32 (in the bfloat16 model too), so no backend lowers them to reduced
precision (TF32 on GPUs); the PA blocks get the same guarantee from
`precision=HIGHEST` on their einsums.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from paresseg_jax.models.fusion import _head_channels, _suffix
from paresseg_jax.models.fusion_block import FusionBlock
from paresseg_jax.models.layers import Conv
from paresseg_jax.models.registry import register_fusion_block


def window_offsets(window: int) -> list:
    """(dy, dx) of a square window centred on (0, 0), row by row."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window} must be a positive odd number (a window centred on each position)")
    r = window // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def local_attention(query, key, value, window: int, bias=None):
    """Each position of ``query`` attends to ``key``/``value`` in the ``window`` x ``window`` around it.

    ``query``, ``key``: [B, H, W, D]; ``value``: [B, H, W, C]; ``bias``: one
    logit offset per window offset (learned relative-position preference) or
    None. Positions outside the map take no weight. Logits are q.k / sqrt(D);
    everything is computed in float32 at least. Returns [B, H, W, C].

    The offsets are a loop (``lax.map``, ``lax.scan``) whose bodies are
    rematerialised in the backward pass: memory holds the [window^2, B, H, W]
    weights and no shifted copy of the features. Unrolled, the same function
    (width-4 features, 64 px) compiled 8x slower on a CPU, ran 14x slower and
    planned 8x the temporary memory.
    """
    r = window // 2
    offsets = jnp.asarray(window_offsets(window), jnp.int32)
    dtype = jnp.promote_types(query.dtype, jnp.float32)
    query, key, value = (x.astype(dtype) for x in (query, key, value))
    batch, height, width, depth = query.shape
    pad = ((0, 0), (r, r), (r, r), (0, 0))
    key, value = jnp.pad(key, pad), jnp.pad(value, pad)
    inside = jnp.pad(jnp.ones((height, width), bool), r)

    def shifted(x, offset):
        """``x`` (padded) seen from each position's ``offset`` neighbour."""
        start = (r + offset[0], r + offset[1])
        if x.ndim == 2:
            return jax.lax.dynamic_slice(x, start, (height, width))
        return jax.lax.dynamic_slice(x, (0, *start, 0), (batch, height, width, x.shape[-1]))

    @jax.checkpoint
    def logit(offset):
        score = jnp.sum(query * shifted(key, offset), axis=-1) / jnp.sqrt(jnp.asarray(depth, dtype))
        return jnp.where(shifted(inside, offset), score, -jnp.inf)

    logits = jax.lax.map(logit, offsets)  # [window^2, B, H, W]
    if bias is not None:
        logits = logits + bias.astype(dtype)[:, None, None, None]
    weights = jax.nn.softmax(logits, axis=0)

    @jax.checkpoint
    def mix(total, offset_and_weight):
        offset, weight = offset_and_weight
        return total + weight[..., None] * shifted(value, offset), None

    out, _ = jax.lax.scan(mix, jnp.zeros((batch, height, width, value.shape[-1]), dtype), (offsets, weights))
    return out


class LocalPhaseAttention(nn.Module):
    """PV features query another phase's features in a local window (`spa`).

    out = other + gamma * attend(q = W_q pv, k = W_k other, v = other), with
    1x1 projections to half the channels for queries and keys, a learned
    bias per window offset, and gamma initialised to 0 as the reference's
    attention modules are (training starts from the plain two-branch block).
    """

    window: int = 7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pv, other):
        depth = max(1, pv.shape[-1] // 2)
        query = Conv(depth, 1, dtype=self.dtype, name="query")(pv)
        key = Conv(depth, 1, dtype=self.dtype, name="key")(other)
        bias = self.param("position_bias", nn.initializers.zeros, (self.window ** 2,), jnp.float32)
        gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
        attended = local_attention(query, key, other, self.window, bias)
        other32 = other.astype(attended.dtype)
        return (other32 + gamma * attended).astype(self.dtype)


@register_fusion_block("spatial")
class SpatialInterPhaseAttentionBlock(FusionBlock):
    """The PA block's two-branch layout with spatial instead of channel inter-phase attention.

    PV: conv5c -> conv51. Each other phase: conv5p -> local attention from
    the PV branch's conv5c features (`spa`, `spa_1`, ...) -> conv52. Output:
    the branches concatenated, C / 2 channels with two phases (as `pa`).
    """

    window: int = 7

    @nn.compact
    def __call__(self, pv, others: Sequence, train: bool):
        inter = _head_channels(pv)
        pv_features = self.conv(inter, "conv5c")(pv, train)
        branches = [self.conv(inter, "conv51")(pv_features, train)]
        for k, other in enumerate(others):
            s = _suffix(k)
            other_features = self.conv(inter, "conv5p" + s)(other, train)
            attended = LocalPhaseAttention(self.window, self.dtype, name="spa" + s)(pv_features, other_features)
            branches.append(self.conv(inter, "conv52" + s)(attended, train))
        return jnp.concatenate(branches, axis=-1)
