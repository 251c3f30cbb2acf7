"""A study's time beside its compute bound: where ``paresseg-predict``'s seconds went, and the least time
its forward passes could take on this machine.

The bound is the FLOPs the study's forward passes computed (XLA's cost
analysis of each compiled forward times its calls, from the study's
``stage_times`` record) divided by the machine's dense convolution rate,
measured in the same run on one large 3 x 3 convolution of known FLOPs
(its fastest call, before and after each study: on a shared machine a passing
load must not make the bound higher than the truth). A study
near its bound has no overhead left to remove; the breakdown says where the
rest goes.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from jax import lax

from paresseg_jax.benchmarks.timing import time_interleaved
from paresseg_jax.ops.conv import DIMENSION_NUMBERS

# NHWC input and HWIO kernel of the measured convolution: a PA-ResSeg width-64 layer at a quarter of a slice
# (~260 GFLOP/s on a shared 2-core CPU, as fast as the 128- and 256-channel layers, faster than whole slices).
CONV_INPUT, CONV_KERNEL = (1, 256, 256, 64), (3, 3, 64, 64)


def conv_flops(input_shape, kernel_shape) -> float:
    """FLOPs of a stride-1 'SAME' convolution (odd kernel) counted as XLA counts the model's: 2 per
    multiply-add, for every tap of every output that reads the image (not its zero padding)."""
    batch, height, width, _ = input_shape
    kh, kw, channels_in, channels_out = kernel_shape

    def taps(size, k):  # each border loses 1 + 2 + ... + k // 2 taps
        return k * size - (k // 2) * (k // 2 + 1)

    return 2.0 * batch * taps(height, kh) * taps(width, kw) * channels_in * channels_out


def dense_conv_rate(input_shape=CONV_INPUT, kernel_shape=CONV_KERNEL, repeats: int = 20) -> float:
    """FLOP/s of this machine's float32 convolution (XLA's, as inference uses by default): its fastest call."""
    x, w = jnp.ones(input_shape, jnp.float32), jnp.ones(kernel_shape, jnp.float32)
    conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS))
    timed = time_interleaved({"conv": lambda: conv(x, w).block_until_ready()}, repeats, settle_s=0.0)
    return conv_flops(input_shape, kernel_shape) / timed["conv"]["min"]


def with_bound(row: Mapping, stage_times: Mapping, conv_rate: float) -> dict:
    """A study row (``volume_s``: its wall time) with its breakdown and bound: ``stages`` (seconds of each stage
    that ran), ``beside`` (seconds of stages run in a thread beside those, not in their sum), ``other_s`` (the rest: start-up, imports, model loading), ``forward_gflop``, ``conv_gflops``
    (the measured rate), ``bound_s`` (FLOPs / rate) and ``vs_bound`` (wall time / bound)."""
    stages = {name: s for name, s in stage_times["seconds"].items() if name not in stage_times["not_run"]}
    bound = stage_times["forward_flops"] / conv_rate
    return {**row, "stages": stages, "beside": dict(stage_times.get("beside", {})),
            "other_s": row["volume_s"] - sum(stages.values()),
            "forward_gflop": stage_times["forward_flops"] / 1e9, "forward_calls": stage_times["forward_calls"],
            "conv_gflops": conv_rate / 1e9, "bound_s": bound, "vs_bound": row["volume_s"] / bound if bound else None}


def breakdown_text(row: Mapping) -> str:
    """The breakdown of a :func:`with_bound` row, a stage per line, and its bound."""
    cache = f", {row['cache']} compilation cache" if "cache" in row else ""
    lines = [f"where the {row['mode']} study's {row['volume_s']:.1f} s go ({row['slices']} slices of "
             f"{row['size']} x {row['size']}{cache}):"]
    for name, seconds in {**row["stages"], "other (start-up, imports, models)": row["other_s"]}.items():
        lines.append(f"  {seconds:8.2f} s  {seconds / row['volume_s']:6.1%}  {name}")
    for name, seconds in row.get("beside", {}).items():
        lines.append(f"  {seconds:8.2f} s  beside the stages above (in a thread, not in the sum): {name}")
    ratio = "" if row["vs_bound"] is None else f"; the study takes {row['vs_bound']:.1f}x its bound"
    lines.append(f"  bound: {row['forward_gflop']:.1f} GFLOP in {row['forward_calls']} forward passes at "
                 f"{row['conv_gflops']:.0f} GFLOP/s (dense convolution, this run) = {row['bound_s']:.2f} s{ratio}")
    return "\n".join(lines)
