"""Intra-phase and inter-phase attention (paper Sec. 2.B, Eq. 1-4).

Two semantics, chosen by `attention`:
- 'reference': what the official PyTorch code computes (learnable `gamma`
  of shape (1,), initialised to 0, and softmax(rowmax(E) - E)). Its inter-PA
  scale sigmoid(sum of a softmax row) is sigmoid(1) for every input, so the
  module reduces to A * (1 + sigmoid(1) * gamma); we reproduce that.
- 'paper': the equations (no gamma, no max-minus trick). Eq. 1 read as
  DANet, which the paper builds on: out_j = sum_i m_ji P'_i with m_ji
  normalised over the summed channel i, i.e. softmax(E, -1) @ P'. Eq. 2
  normalises over ART channels, Eq. 3 with the sigmoid the text describes.

Channel energies are sums over all H*W pixels (|E| up to ~2.5e4 at full
resolution) and the fine scales' softmaxes are nearly one-hot, so energies,
softmax and the attended features are always computed in at least float32,
whatever the compute dtype, and with `precise=True` (the models' default)
every attention matmul asks for `Precision.HIGHEST`: on Ampere and newer
GPUs XLA otherwise computes float32 dot products in TF32 (PyTorch's `bmm`,
which the reference uses, is full float32 by default).
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


def _precision(precise: bool):
    return jax.lax.Precision.HIGHEST if precise else None


def _flatten(x):
    """[B, H, W, C] -> [B, N, C] in at least float32."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c).astype(jnp.promote_types(x.dtype, jnp.float32))


class IntraPhaseAttention(nn.Module):
    """Channel attention within one phase (DANet's channel attention; `sc`).

    With X in R^{C x N}: E = X X^T. reference: out = gamma * softmax(rowmax(E)
    - E) X + X. paper (Eq. 1): out = softmax(E) X + X. Both apply to output
    channel c the weights of row c, which sum to one over the channels summed.
    """

    attention: str = "reference"
    dtype: Any = jnp.float32
    precise: bool = True

    @nn.compact
    def __call__(self, x):
        flat = _flatten(x)
        precision = _precision(self.precise)
        energy = jnp.einsum("bnc,bnd->bcd", flat, flat, precision=precision)
        reference = check_attention(self.attention) == "reference"
        weights = jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy if reference else energy, axis=-1)
        attended = jnp.einsum("bcd,bnd->bnc", weights, flat, precision=precision)
        if reference:
            attended = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32) * attended
        return (attended + flat).reshape(x.shape).astype(self.dtype)


def inter_phase_scale(pv, other, attention: str, precise: bool = True):
    """Per-channel scale s in (0, 1) of the other phase's features, float32 [B, C].

    E = A P^T (rows: other-phase channels, columns: PV channels).
    reference: s = sigmoid(rowsum softmax(rowmax(E) - E)) (= sigmoid(1)).
    paper (Eq. 2-3): x_ij = softmax over other-phase channels i of E_ij,
    s_i = sigmoid(sum_j x_ij).
    """
    energy = jnp.einsum("bna,bnp->bap", _flatten(other), _flatten(pv), precision=_precision(precise))
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
    precise: bool = True

    @nn.compact
    def __call__(self, pv, other):
        scale = inter_phase_scale(pv, other, self.attention, self.precise)[:, None, None, :]
        other32 = other.astype(jnp.promote_types(other.dtype, jnp.float32))
        if self.attention == "reference":
            gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
            out = gamma * (scale * other32) + other32
        else:
            out = scale * other32 + other32
        return out.astype(self.dtype)
