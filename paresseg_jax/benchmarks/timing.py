"""Side-by-side timing: warm-up excluded, variants interleaved, medians.

The machine may be shared and its load may drift during a run, so variants
are timed in rounds (A, B, A, B, ...) rather than one after the other, and
ratios of medians from the same run are what a comparison reports. Within a
round each variant first makes an untimed call: the first call after another
variant (another framework's allocator) ran touches memory the operating
system has to hand out afresh, a cost a training run using one framework
never pays (measured: a JAX train step right after a PyTorch step, 3.4-5.0 s;
the next one, 2.6 s).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax.infer.predict import cost_flops


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     settle_s: float = 0.2, rewarm: int = 1) -> dict[str, dict]:
    """Seconds per call of each blocking callable: ``{name: {'median', 'min', 'times'}}``.

    Every callable must return only when its work is done (call
    ``block_until_ready`` inside it). `warmup` untimed calls per variant come
    first; in each of the `repeats` rounds a variant makes `rewarm` untimed
    calls before its timed one (with a single variant there is nothing to
    re-warm from). Each timed call starts `settle_s` after the previous call
    ended: PyTorch's OpenMP threads keep spinning for a while after a call and
    would otherwise slow whichever variant runs next.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rewarm = rewarm if len(fns) > 1 else 0
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(rewarm):
                fn()
            time.sleep(settle_s)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": float(np.median(t)), "min": float(np.min(t)), "times": t} for name, t in times.items()}


def xla_flops(fn: Callable, *args) -> float | None:
    """FLOPs of one call of ``fn(*args)`` from XLA's cost analysis of its lowering for the CPU (None if unavailable).

    Counted on a CPU lowering whatever device runs `fn`, so CPU and GPU rows use
    the same count: on the GPU the analysis gave none (jax 0.11) or left the
    cuDNN convolutions out (3.7 of ~355 GFLOP per PA-ResSeg sample, jax 0.10).
    """
    try:
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), sharding=cpu), args)
        lowered = jax.jit(fn).lower(*specs)
    except Exception:  # noqa: BLE001  (no CPU backend, e.g. JAX_PLATFORMS=cuda)
        return None
    return cost_flops(lowered)


def compile_timed(jitted, *args) -> tuple[Any, float]:
    """(compiled executable, seconds spent tracing and compiling)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start
