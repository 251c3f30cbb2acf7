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

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

TESTS = Path(__file__).resolve().parent
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


def standin_runs(cache_dir: Path, root: Path, **tumor_options) -> tuple[Path, Path]:
    """A tiny training run over ``cache_dir`` (``test_train_support``'s) and a liver run with the same split,
    whose exported models are stand-ins: tumor where ART exceeds PV by 0.2 (that cache's tumors exactly),
    liver where PV is above 0.25 (its liver)."""
    import shutil

    from paresseg_jax.train import loop
    from test_train_support import tiny_config

    run = root / "run"
    loop.train_and_evaluate(tiny_config(cache_dir, num_steps=2, eval_every=2, checkpoint_every=2), str(run))
    save_standin(run / "last_model", **tumor_options)
    liver = Path(shutil.copytree(run, root / "liver"))
    save_standin(liver / "last_model", phases=("pv",), rule="bright", offset=0.25)
    return run, liver


def command(name: str, *args, status: int = 0) -> subprocess.CompletedProcess:
    """A console script as a user runs it, with ``tests/`` on the import path (the stand-ins live there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(Path(sys.executable).with_name(name)), *map(str, args)], capture_output=True,
                          encoding="utf-8", errors="replace", env=env, timeout=300)
    assert done.returncode == status, (done.stdout[-2000:], done.stderr[-3000:])
    return done
