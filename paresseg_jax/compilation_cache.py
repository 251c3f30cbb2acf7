"""A persistent XLA compilation cache for the launchers.

A second run with the same model, shapes, flags and jax version loads its
compiled steps from disk instead of compiling them again: PA-ResSeg's train
step (width 8, 64 px) on this 2-core CPU, 28.0 s of compilation -> 8.6 s of
tracing and loading; on a GPU, where compilation includes convolution
autotuning, 51-123 s per step were measured (BENCHMARKS.md). Resuming a
training, predicting with a trained model and rerunning the demo gain most.

Where: ``$PARESSEG_XLA_CACHE``, else JAX's own ``$JAX_COMPILATION_CACHE_DIR``,
else ``~/.cache/paresseg_jax/xla``; ``PARESSEG_XLA_CACHE=0`` turns it off.
Only compilations longer than a second are stored, and the folder is kept
under 2 GB (JAX drops the least recently used entries; it needs ``filelock``
for that, without which it caches nothing, hence our dependency on it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "PARESSEG_XLA_CACHE"
MAX_BYTES = 2 << 30
SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs", "jax_compilation_cache_max_size")


def cache_dir(environ=os.environ) -> Path | None:
    """The folder to use, or None when turned off."""
    chosen = environ.get(ENV) or environ.get("JAX_COMPILATION_CACHE_DIR")
    if chosen == "0":
        return None
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "paresseg_jax" / "xla"


def enable(min_compile_secs: float = 1.0) -> Path | None:
    """Points JAX's persistent compilation cache at `cache_dir()` (before anything compiles); returns it."""
    folder = cache_dir()
    if folder is None:
        return None
    settings = dict(zip(SETTINGS, (str(folder), min_compile_secs, MAX_BYTES)))
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # jax reads them when imported: a launcher that stops at a bad input never imports it
        for name, value in settings.items():
            os.environ[name.upper()] = str(value)
    return folder
