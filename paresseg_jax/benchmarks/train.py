"""Train-step throughput: samples/s and achieved GFLOP/s, optionally beside the PyTorch oracle.

The JAX step is the library's own (`train.step.make_train_step`: forward,
backward, Adam, finite-guard), jitted with the state donated. FLOPs come
from XLA's cost analysis of the step with plain XLA convolutions, i.e. a
direct convolution's count whatever computes it (the analysis would count
the chunked weight gradient's loop body once and Winograd's fewer
multiplies), so GFLOP/s compare across implementations and devices. With
a torch model the same weights and batch run the reference recipe
(cross-entropy, Adam 5e-4) in the same process, interleaved with the JAX
steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax import losses, models, ops
from paresseg_jax.benchmarks import profile, torch_device
from paresseg_jax.benchmarks.timing import compile_timed, time_interleaved, xla_flops
from paresseg_jax.train.state import create_train_state, make_optimizer
from paresseg_jax.train.step import make_train_step

TRAIN_CONFIG = {"learning_rate": 5e-4, "schedule": "constant"}


def random_batch(phases, batch: int, size: int, in_channels: int = 3, seed: int = 0) -> dict:
    """A training batch as the pipeline gives it (inputs in [0, 1], 0/1 labels, unit weights)."""
    rng = np.random.default_rng(seed)
    out = {p: rng.random((batch, size, size, in_channels), np.float32) for p in phases}
    out["label"] = (rng.random((batch, size, size)) > 0.7).astype(np.int32)
    out["weight"] = np.ones((batch, size, size), np.float32)
    return out


class JaxTrainStep:
    """A compiled train step with its own state; calling it runs one step and blocks."""

    def __init__(self, module, variables, batch: dict):
        tx = make_optimizer(TRAIN_CONFIG, 1)
        step = make_train_step(module, tx, losses.get_loss("ce"), lambda _: TRAIN_CONFIG["learning_rate"])
        # A copy: the step donates its state, and other variants start from the same variables.
        self.state = create_train_state(jax.tree.map(jnp.array, variables), tx, seed=0)
        self.batch = jax.device_put(batch)
        jitted = jax.jit(step, donate_argnums=0)
        self.compiled, self.compile_s = compile_timed(jitted, self.state, self.batch)
        self.memory = planned_memory(self.compiled)
        with ops.conv_impl("xla"):  # cost analysis would count the chunked gradient's loop body once and
            # Winograd's multiplies, not the direct convolution's; a fresh function, since jax reuses the
            # trace of `step` made outside this block
            self.flops = xla_flops(lambda *args: step(*args), self.state, self.batch)

    def __call__(self):
        self.state, metrics = self.compiled(self.state, self.batch)
        metrics["loss"].block_until_ready()


def planned_memory(compiled) -> dict:
    """MB XLA plans for one call by its memory analysis: ``temp_mb`` (the step's working buffers: activations,
    gradients) and ``memory_mb`` (those plus arguments and outputs, donated ones once); empty if unavailable.
    (The analysis' ``peak_memory_in_bytes`` leaves the temporaries out on a CPU.)"""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        return {"temp_mb": m.temp_size_in_bytes / 2**20, "memory_mb": total / 2**20}
    except (AttributeError, TypeError):  # a backend or jax version without the analysis
        return {}


def torch_train_step(model, batch: dict, phases) -> Any:
    """One reference-recipe step of the torch oracle on the same batch (NCHW copies on the model's device)."""
    import torch

    target = torch_device.of(model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAIN_CONFIG["learning_rate"])
    inputs = [torch.from_numpy(np.ascontiguousarray(batch[p].transpose(0, 3, 1, 2))).to(target) for p in phases]
    label = torch.from_numpy(batch["label"]).long().to(target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(*inputs), label)
        loss.backward()
        optimizer.step()
        torch_device.synchronize(target)

    return step


def benchmark_train(module_for_dtype, variables, batch_size: int, size: int, dtypes, repeats: int, warmup: int,
                    torch_model=None, conv_impls=(), profile_calls: int = 0,
                    profile_dir: str | None = None) -> list[dict]:
    """Rows ``{'part', 'variant', 'dtype', 'batch', 'size', 'step_s', 'samples_per_s', 'gflop_per_step',
    'gflops', 'compile_s', 'temp_mb', 'memory_mb'}`` (XLA's planned memory of one step, :func:`planned_memory`); `module_for_dtype(dtype)` builds the model in that compute dtype.

    Each of `conv_impls` ('direct', 'xla') adds variant 'jax-<impl>', the same step traced inside
    `ops.conv_impl(impl)`: the baselines of `ops.conv2d`'s CPU Winograd and weight gradient.
    With `profile_calls`, each JAX row also gets ``'profile'``: `profile.summarize` rows of that
    many traced steps (after the timing; traces kept under `profile_dir` if given)."""
    first = module_for_dtype(dtypes[0])
    batch = random_batch(first.phases, batch_size, size, first.in_channels)
    steps, fns = {}, {}
    for dtype in dtypes:
        steps[f"jax {dtype}"] = JaxTrainStep(module_for_dtype(dtype), variables, batch)
        for impl in conv_impls:
            with ops.conv_impl(impl):
                steps[f"jax-{impl} {dtype}"] = JaxTrainStep(module_for_dtype(dtype), variables, batch)
    fns.update(steps)
    if torch_model is not None:
        fns["torch float32"] = torch_train_step(torch_model, batch, first.phases)
    timed = time_interleaved(fns, repeats, warmup)
    rows = []
    for name, t in timed.items():
        variant, dtype = name.split()
        step = steps.get(name)
        flops = step.flops if step else (steps[f"jax {dtypes[0]}"].flops if dtypes[0] == "float32" else None)
        rows.append({
            "part": "train", "variant": variant, "dtype": dtype, "batch": batch_size, "size": size,
            "step_s": t["median"], "samples_per_s": batch_size / t["median"],
            "gflop_per_step": flops / 1e9 if flops else None,
            "gflops": flops / t["median"] / 1e9 if flops else None,
            "compile_s": step.compile_s if step else None,
            **(step.memory if step else {}),
        })
        if step and profile_calls:
            logdir = f"{profile_dir}/{variant}-{dtype}" if profile_dir else None
            try:
                times = profile.op_times(step, profile_calls, logdir)
                rows[-1]["profile"] = profile.summarize(times, profile.op_sources(step.compiled))
            except Exception as error:  # noqa: BLE001  (a failed trace must not cost the timings)
                rows[-1]["profile_error"] = f"{type(error).__name__}: {error}"
    return rows


def module_factory(spec: dict):
    """`dtype -> module` for a saved-model spec (``{'name', **create options}``)."""
    options = {k: v for k, v in spec.items() if k != "name"}
    return lambda dtype: models.create(spec["name"], **{**options, "dtype": dtype})
