"""Shared pieces of the training tests (no tests here): a tiny stand-in model and tiny data.

The real models take minutes to compile on this 2-core machine, so the
default-tier training tests use ``TinySeg``: the same interface (phases,
in_channels, ``bn_axis_name``, ``train=``), a cross-replica BatchNorm and a
reference-form channel attention (the ill-conditioned part that makes float32
comparisons noisy), and it computes in whatever dtype it is given, float64
included. Slow tests use the real models.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax.models import registry

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny_test_seg"


class TinySeg(nn.Module):
    phases: tuple = ("pv", "art")
    in_channels: int = 3
    width: int = 4
    num_classes: int = 2
    attention: str = "reference"
    precise_attention: bool = True
    fusion: Optional[str] = None
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, *inputs, train: bool):
        features = []
        # No conv bias before BatchNorm: its true gradient is 0, and Adam turns rounding noise there into
        # lr-sized updates that differ between reduction orders.
        for phase, x in zip(self.phases, inputs):
            h = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name=f"{phase}_conv")(x.astype(self.dtype))
            h = nn.BatchNorm(
                use_running_average=not train, axis_name=self.bn_axis_name, momentum=0.9, dtype=self.dtype,
                name=f"{phase}_bn",
            )(h)
            features.append(nn.relu(h))
        h = jnp.concatenate(features, axis=-1)
        b, height, width, c = h.shape
        flat = h.reshape(b, height * width, c)
        precision = jax.lax.Precision.HIGHEST if self.precise_attention else None
        energy = jnp.einsum("bnc,bnd->bcd", flat, flat, precision=precision)
        weights = jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy, axis=-1)
        gamma = self.param("gamma", nn.initializers.constant(0.5), (1,), jnp.float32).astype(self.dtype)
        h = (gamma * jnp.einsum("bcd,bnd->bnc", weights, flat, precision=precision) + flat).reshape(h.shape)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="final")(h)


if TINY not in registry.MODELS:
    registry.register_model(TINY)(TinySeg)


def random_batch(rng: np.random.Generator, size: int, hw: int = 16, dtype=np.float32) -> dict:
    return {
        "pv": rng.random((size, hw, hw, 3)).astype(dtype),
        "art": rng.random((size, hw, hw, 3)).astype(dtype),
        "label": (rng.random((size, hw, hw)) > 0.7).astype(np.int32),
        "weight": rng.uniform(0.2, 1.8, (size, hw, hw)).astype(dtype),
    }


def write_tiny_cache(root: Path, num_cases: int = 5, shape=(6, 40, 40), seed: int = 0) -> Path:
    """A preprocessed cache of tiny synthetic cases (a bright ART tumor inside a liver)."""
    from paresseg_jax.data import cache

    cache_dir = cache.cache_dir_for(root, {"tiny": True, "seed": seed, "shape": list(shape)})
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    types = ["cyst", "fnh", "hcc", "hem", "mets"]
    for i in range(num_cases):
        liver = ((y - 20) ** 2 + (x - 20) ** 2 < 15**2).astype(np.uint8)
        cy, cx, r = rng.integers(14, 26), rng.integers(14, 26), rng.integers(3, 6)
        tumor = (((y - cy) ** 2 + (x - cx) ** 2 < r**2) & (z >= 1) & (z <= 4)).astype(np.uint8)
        pv = 0.5 * liver + 0.05 * rng.standard_normal(shape)
        art = pv + 0.4 * tumor
        weight = np.where(tumor > 0, 0.8, 0.2).astype(np.float32)
        cache.store_case(
            cache_dir, f"case{i:02d}", {"pv": np.clip(pv, 0, 1), "art": np.clip(art, 0, 1)},
            liver, tumor, liver, weight, {"tumor_type": types[i % len(types)], "spacing": [1.0, 1.0, 5.0], "origin": [0.0, 0.0, 0.0],
             "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]},
        )
    return cache_dir


def tiny_config(cache_dir: Path, **train):
    """Smoke-sized config over a tiny cache with the stand-in model."""
    from paresseg_jax import config_defaults

    config = config_defaults.get_config()
    config.model.name = TINY
    config.model.width = 4
    config.data.cache_dir = str(cache_dir)
    config.data.crop_size = 32
    config.data.worker_count = 0
    config.data.num_folds = 5
    config.data.fold = 0
    config.data.val_fraction = 0.2
    config.train.batch_size = 4
    config.train.num_steps = 12
    config.train.log_every = 1
    config.train.eval_every = 6
    config.train.checkpoint_every = 3
    config.eval.batch_size = 4
    config.train.update(train)
    return config


def xla_flags_with_devices(devices: int) -> str:
    """The session's ``XLA_FLAGS`` (tests/conftest.py) plus ``devices`` simulated CPU devices."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()


def run_script(code: str, devices: int = 1, timeout: int = 300, env: dict | None = None, wait: bool = True,
               log: Path | None = None):
    """Run python ``code`` in a fresh process with ``devices`` fake CPU devices. ``wait=False``: the started
    process, its output piped, or with ``log`` written to that file from a session of its own (so that the
    group, which holds the processes it starts, can be ended with it)."""
    full_env = dict(os.environ)
    full_env.update(
        XLA_FLAGS=xla_flags_with_devices(devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
    )
    full_env.update(env or {})
    args = [sys.executable, "-c", code]
    if not wait and log is not None:
        with open(log, "w") as out:
            return subprocess.Popen(args, env=full_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if not wait:
        return subprocess.Popen(args, env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    result = subprocess.run(args, env=full_env, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    if result.returncode:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result.stdout
