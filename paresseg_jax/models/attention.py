"""Intra-phase and inter-phase attention (paper Sec. 2.B, Eq. 1-4).

Two semantics, chosen by `attention`:
- 'reference': what the official PyTorch code computes (learnable `gamma`
  of shape (1,), initialised to 0, and softmax(rowmax(E) - E)). Its inter-PA
  scale sigmoid(sum of a softmax row) is sigmoid(1) for every input, so the
  module reduces to A * (1 + sigmoid(1) * gamma); we reproduce that.
- 'paper': the equations as printed (no gamma, no max-minus trick; Eq. 2
  normalises over ART channels, Eq. 3 with the sigmoid the text describes).

Channel energies are sums over all H*W pixels (|E| up to ~2.5e4 at full
resolution), so energies, softmax and the attended features are always
computed in at least float32, whatever the compute dtype.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_MODES = ("reference", "paper")


def check_attention(attention: str) -> str:
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention={attention!r} is unknown; use one of {ATTENTION_MODES}")
    return attention


def _flatten(x):
    """[B, H, W, C] -> [B, N, C] in at least float32."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c).astype(jnp.promote_types(x.dtype, jnp.float32))


class IntraPhaseAttention(nn.Module):
    """Channel attention within one phase (DANet's channel attention; `sc`).

    With X in R^{C x N}: E = X X^T. reference: out = gamma * softmax(rowmax(E)
    - E) X + X. paper (Eq. 1): out = softmax(E)^T X + X.
    """

    attention: str = "reference"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        flat = _flatten(x)
        energy = jnp.einsum("bnc,bnd->bcd", flat, flat)
        if check_attention(self.attention) == "reference":
            gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
            weights = jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy, axis=-1)
            out = gamma * jnp.einsum("bcd,bnd->bnc", weights, flat) + flat
        else:
            weights = jax.nn.softmax(energy, axis=-1)
            out = jnp.einsum("bdc,bnd->bnc", weights, flat) + flat
        return out.reshape(x.shape).astype(self.dtype)


def inter_phase_scale(pv, other, attention: str):
    """Per-channel scale s in (0, 1) of the other phase's features, float32 [B, C].

    E = A P^T (rows: other-phase channels, columns: PV channels).
    reference: s = sigmoid(rowsum softmax(rowmax(E) - E)) (= sigmoid(1)).
    paper (Eq. 2-3): x_ij = softmax over other-phase channels i of E_ij,
    s_i = sigmoid(sum_j x_ij).
    """
    energy = jnp.einsum("bna,bnp->bap", _flatten(other), _flatten(pv))
    if check_attention(attention) == "reference":
        weights = jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy, axis=-1)
    else:
        weights = jax.nn.softmax(energy, axis=-2)
    return jax.nn.sigmoid(jnp.sum(weights, axis=-1))


class InterPhaseAttention(nn.Module):
    """Re-weights another phase's channels by their relation to PV (`pa`).

    reference: out = gamma * (s * A) + A. paper (Eq. 4): out = s * A + A.
    """

    attention: str = "reference"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pv, other):
        scale = inter_phase_scale(pv, other, self.attention)[:, None, None, :]
        other32 = other.astype(jnp.promote_types(other.dtype, jnp.float32))
        if self.attention == "reference":
            gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
            out = gamma * (scale * other32) + other32
        else:
            out = scale * other32 + other32
        return out.astype(self.dtype)
