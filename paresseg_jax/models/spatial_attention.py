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
    """
    offsets = window_offsets(window)
    r = window // 2
    dtype = jnp.promote_types(query.dtype, jnp.float32)
    query, key, value = (x.astype(dtype) for x in (query, key, value))
    _, height, width, depth = query.shape
    pad = ((0, 0), (r, r), (r, r), (0, 0))
    key, value = jnp.pad(key, pad), jnp.pad(value, pad)
    inside = jnp.pad(jnp.ones((height, width), bool), r)

    def shifted(x, dy, dx):
        return x[..., r + dy : r + dy + height, r + dx : r + dx + width, :] if x.ndim == 4 else \
            x[r + dy : r + dy + height, r + dx : r + dx + width]

    logits = jnp.stack([jnp.sum(query * shifted(key, dy, dx), axis=-1) for dy, dx in offsets], axis=-1)
    logits = logits / jnp.sqrt(jnp.asarray(depth, dtype))
    if bias is not None:
        logits = logits + bias.astype(dtype)
    valid = jnp.stack([shifted(inside, dy, dx) for dy, dx in offsets], axis=-1)
    weights = jax.nn.softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
    return sum(weights[..., k, None] * shifted(value, dy, dx) for k, (dy, dx) in enumerate(offsets))


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
