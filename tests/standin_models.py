"""Stand-in models whose masks are known, for end-to-end tests (no tests here).

An untrained network's masks are empty, so an end-to-end equality check on it
compares two empty masks and passes whatever the code does. These stand-ins
are ordinary Linen models (saved with ``model_io.save_model`` under the import
path ``standin_models:PhaseContrast``, so a launcher in a subprocess with
``PYTHONPATH=tests`` loads them) whose output follows the input by a rule:

- ``rule='bright'`` (a liver model): foreground where the centre PV slice is
  above ``offset``;
- ``rule='contrast'`` (a tumor model): foreground where ART exceeds PV by more
  than ``offset``: moving or removing ART changes the mask.

Optional terms make settings that a pixelwise rule would ignore observable:
``context`` adds the slice's mean PV (so cropping and tiling change the output,
as the phase attention's whole-slice energies do), ``tilt`` a left-right ramp
(so flip test-time augmentation changes it) and ``conv`` a 64-channel 3 x 3
``ops.conv2d`` of PV (so the CPU convolution setting changes its rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_CHANNELS = 64  # ops.conv2d uses Winograd from 64 channels on


class PhaseContrast(nn.Module):
    phases: tuple = ("pv", "art")
    in_channels: int = 3
    num_classes: int = 2
    width: int = 4
    dtype: Any = jnp.float32
    rule: str = "contrast"
    gain: float = 1e4
    offset: float = 0.2
    context: float = 0.0
    tilt: float = 0.0
    conv: float = 0.0

    @nn.compact
    def __call__(self, *inputs, train: bool = False):
        from paresseg_jax import ops

        centre = {phase: x[..., 1:2].astype(jnp.float32) for phase, x in zip(self.phases, inputs)}
        pv = centre["pv"]
        signal = pv if self.rule == "bright" else centre["art"] - pv
        score = self.gain * (signal - self.offset)
        score += self.context * pv.mean(axis=(1, 2), keepdims=True)
        score += self.tilt * jnp.linspace(-1.0, 1.0, pv.shape[2])[None, None, :, None]
        kernel = self.param("kernel", nn.initializers.normal(0.1), (3, 3, CONV_CHANNELS, CONV_CHANNELS))
        channels = pv * jnp.linspace(0.5, 1.5, CONV_CHANNELS)
        score += self.conv * ops.conv2d(channels, kernel).mean(axis=-1, keepdims=True)
        return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)


def save_standin(path: Path, phases=("pv", "art"), **options) -> Path:
    """A saved model (``model.json`` + weights) of a ``PhaseContrast`` with these options."""
    from paresseg_jax import model_io, models

    spec = {"name": "standin_models:PhaseContrast", "phases": list(phases), **options}
    module = models.create(spec["name"], **{k: v for k, v in spec.items() if k not in ("name", "phase_dropout")})
    return model_io.save_model(path, spec, models.init_variables(module, jax.random.key(0)))
