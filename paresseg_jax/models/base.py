"""What every segmentation model shares: its options, input checks, and the
padding that lets any slice size through.

The reference needs H and W divisible by 32 (five 2x2 poolings, then
deconvolutions that exactly double). Inputs are zero-padded at the bottom
and right to the next multiple of 32 and the logits cropped back, so a
100x75 slice gives 100x75 logits; multiples of 32 pass unchanged, exactly
as in the reference.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

MULTIPLE = 32


class SegmentationModel(nn.Module):
    """Common options; subclasses implement `__call__(*inputs, train)`, one
    NHWC input per phase in the order of `phases` (PV first)."""

    phases: Tuple[str, ...] = ("pv",)
    in_channels: int = 3
    width: int = 64
    num_classes: int = 2
    attention: str = "reference"
    precise_attention: bool = True  # Precision.HIGHEST on attention matmuls (no TF32 on GPUs)
    fusion: Optional[str] = None
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @property
    def layer_options(self) -> dict:
        return dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)

    def check_inputs(self, inputs: Sequence) -> None:
        """One [B, H, W, in_channels] array per phase, all of one shape."""
        if len(inputs) != len(self.phases):
            raise ValueError(f"{type(self).__name__} with phases={self.phases} takes {len(self.phases)} inputs "
                             f"(one per phase, in that order), got {len(inputs)}")
        for phase, x in zip(self.phases, inputs):
            if x.ndim != 4 or x.shape[-1] != self.in_channels:
                raise ValueError(f"input for phase {phase!r} must be NHWC with {self.in_channels} channels "
                                 f"(in_channels), got shape {x.shape}")
            if x.shape != inputs[0].shape:
                raise ValueError(f"all phases must have the same shape; {phase!r} has {x.shape}, "
                                 f"PV has {inputs[0].shape}")

    def padded_inputs(self, inputs: Sequence) -> list:
        """Checked inputs in the compute dtype, H and W zero-padded to multiples of 32."""
        self.check_inputs(inputs)
        pad_h, pad_w = (-inputs[0].shape[1]) % MULTIPLE, (-inputs[0].shape[2]) % MULTIPLE
        return [jnp.pad(x.astype(self.dtype), ((0, 0), (0, pad_h), (0, pad_w), (0, 0))) for x in inputs]

    @staticmethod
    def cropped_logits(logits, like):
        """Logits cropped to the spatial size of input `like`, in at least float32."""
        return logits[:, :like.shape[1], :like.shape[2]].astype(jnp.promote_types(logits.dtype, jnp.float32))
