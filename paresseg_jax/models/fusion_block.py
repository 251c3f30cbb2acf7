"""The fusion block contract: the `FusionBlock` base class and its call as a Protocol.

A fusion block is a Linen module; the model builds one per scale with the
options below and calls it as `FusionCall` says. A block written outside
this package (`my_package.blocks:MyBlock`) follows the same contract.
"""

from typing import Any, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from paresseg_jax.models.layers import ConvBNReLU


class FusionCall(Protocol):
    """``block(pv, others, train) -> fused``: one scale's NHWC PV features, the other phases' features
    (same shape, PV excluded, possibly none) and the train flag; returns NHWC features of any channel
    count (the decoder adapts to it)."""

    def __call__(self, pv: jax.Array, others: Sequence[jax.Array], train: bool) -> jax.Array: ...


class FusionBlock(nn.Module):
    """Options every block receives from the model; a block may ignore them. Subclasses implement `FusionCall`."""

    attention: str = "reference"
    precise_attention: bool = True  # Precision.HIGHEST on the block's attention matmuls (see models.attention)
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    def conv(self, features: int, name: str):
        """The head's Sequential[0 conv3x3 (no bias), 1 BN, 2 ReLU]."""
        return ConvBNReLU(features, 3, use_bias=False, dtype=self.dtype, bn_axis_name=self.bn_axis_name, name=name)
