"""The same training steps in PyTorch and in JAX, and how far the two trajectories drift apart.

One check of a forward pass and one gradient does not show what training does with a difference: Adam
divides by running second moments, and BatchNorm's running statistics carry every batch forward. Here
the PyTorch model and its converted port take N optimiser steps on identical batches (drawn once from
our Grain pipeline, as training draws them, and handed to both), with BatchNorm in train mode, Adam at a
constant learning rate and the cross-entropy or boundary-enhanced loss. The JAX side is the training
loop's own step (`train.step.make_train_step`). Needs torch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import numpy as np
import torch

from paresseg_jax import config_defaults, losses
from paresseg_jax.data import cache
from paresseg_jax.data.pipeline import make_train_loader
from paresseg_jax.errors import PareSegError
from paresseg_jax.interop import check
from paresseg_jax.interop import torch as interop
from paresseg_jax.train.state import create_train_state, learning_rate_schedule, make_optimizer
from paresseg_jax.train.step import make_train_step

LOSSES = ("ce", "be")
# A gradient below this fraction of the step's largest is zero in exact arithmetic (float64 rounding leaves
# ~1e-14 of it; the real gradients of the oracle at width 4 are 3e-5 of it or more). In float32 rounding is
# above it, so no parameter is set aside.
ZERO_GRADIENT = 1e-9


def pipeline_batches(cache_dir: str | Path, steps: int, *, phases, in_channels: int, batch: int, crop: int,
                     seed: int = 0) -> list[dict]:
    """``steps`` training batches of a preprocessed cache, as `train_and_evaluate` would draw them (one process,
    no worker processes)."""
    config = config_defaults.get_config()
    config.model.phases, config.model.in_channels = tuple(phases), in_channels
    config.data.crop_size, config.data.worker_count, config.train.batch_size = crop, 0, batch
    iterator = iter(make_train_loader(config, cache.open_cohort(cache_dir), seed=seed, process_index=0,
                                      process_count=1, local_device_count=1))
    return [dict(next(iterator)) for _ in range(steps)]


def _torch_loss(logits, label, weight, name: str):
    nll = torch.nn.functional.cross_entropy(logits, label, reduction="none")
    return nll.mean() if name == "ce" else (weight * nll).mean()


def _relative(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / scale) if scale else float(np.linalg.norm(got))


def _zero_gradient(model: torch.nn.Module) -> set[str]:
    """Parameters whose gradient this step is rounding noise: below `ZERO_GRADIENT` x the largest gradient."""
    sizes = {name: float(p.grad.abs().max()) if p.grad is not None else 0.0 for name, p in model.named_parameters()}
    largest = max(sizes.values(), default=0.0)
    return {name for name, size in sizes.items() if size < ZERO_GRADIENT * largest}


def _largest(ours: dict, theirs: dict, keys) -> float | None:
    keys = list(keys)
    return max(_relative(ours[k], theirs[k]) for k in keys) if keys else None


def _step_row(step: int, jax_loss, torch_loss, state, model, arch: str) -> dict:
    """Loss and the largest per-tensor relative differences: parameters with a gradient, parameters without one
    (a conv bias BatchNorm subtracts again: Adam divides each framework's own rounding noise by its eps, so
    these drift apart, and the BN running means that add them up drift with them), BN running variances."""
    ours = interop.to_torch_state_dict(jax.device_get(state.variables), arch)
    theirs = model.state_dict()
    params, without = [k for k, _ in model.named_parameters()], _zero_gradient(model)
    return {"step": step, "loss_torch": float(torch_loss), "loss_jax": float(jax_loss),
            "loss_rel": abs(float(jax_loss) - float(torch_loss)) / abs(float(torch_loss)),
            "params_rel": _largest(ours, theirs, (k for k in params if k not in without)),
            "zero_grad_params": len(without),
            "zero_grad_params_rel": _largest(ours, theirs, (k for k in params if k in without)),
            "running_var_rel": _largest(ours, theirs, (k for k in theirs if k.endswith("running_var"))),
            "running_mean_rel": _largest(ours, theirs, (k for k in theirs if k.endswith("running_mean")))}


def trajectories(model: torch.nn.Module, batches: list[dict], *, loss: str = "ce", dtype: str = "float64",
                 learning_rate: float = 5e-4) -> list[dict]:
    """One row per step (`_step_row`) of training a copy of ``model`` and its port on ``batches`` (pipeline
    dicts: one NHWC array per phase, ``label``, ``weight``) with Adam at ``learning_rate``."""
    if loss not in LOSSES:
        raise PareSegError(f"loss={loss!r} has no PyTorch counterpart here", fix=f"use one of {LOSSES}")
    model = copy.deepcopy(model).to(check.TORCH_DTYPES[dtype]).train()
    arch, module, variables = check.jax_counterpart(model, dtype)
    train_config = {"learning_rate": learning_rate, "schedule": "constant"}
    tx = make_optimizer(train_config, len(batches))
    step = jax.jit(make_train_step(module, tx, losses.get_loss(loss), learning_rate_schedule(train_config, 1)))
    state = create_train_state(variables, tx, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    float_type = np.dtype(dtype)
    rows = []
    for k, batch in enumerate(batches, start=1):
        arrays = {key: np.asarray(value, float_type if key != "label" else np.int32) for key, value in batch.items()}
        inputs = [torch.from_numpy(arrays[p].transpose(0, 3, 1, 2).copy()) for p in module.phases]
        optimizer.zero_grad()
        torch_loss = _torch_loss(model(*inputs), torch.from_numpy(arrays["label"]).long(),
                                 torch.from_numpy(arrays["weight"]), loss)
        torch_loss.backward()
        optimizer.step()
        state, metrics = step(state, arrays)
        rows.append(_step_row(k, metrics["loss"], torch_loss.detach(), state, model, arch))
    return rows


def check_training(model: torch.nn.Module, cache_dir: str | Path, steps: int, *, loss: str = "ce",
                   dtype: str = "float64", batch: int = 2, crop: int = 64, seed: int = 0,
                   learning_rate: float = 5e-4) -> list[dict]:
    """`trajectories` on ``steps`` batches of a preprocessed cache (`pipeline_batches`, the model's phases)."""
    if steps < 1:
        raise PareSegError(f"steps={steps} must be at least 1")
    _, module, _ = check.jax_counterpart(model, dtype)
    batches = pipeline_batches(cache_dir, steps, phases=module.phases, in_channels=module.in_channels, batch=batch,
                               crop=crop, seed=seed)
    return trajectories(model, batches, loss=loss, dtype=dtype, learning_rate=learning_rate)


def _cell(value, width: int) -> str:
    return f"{value:>{width}.2e}" if value is not None else f"{'-':>{width}}"


def format_trajectory(rows: list[dict], tolerance: float) -> str:
    """The per-step table ``paresseg-crosscheck --steps`` prints, and the first step above ``tolerance`` (loss,
    parameters with a gradient, BN running variances)."""
    lines = [f"{'step':>4} {'loss torch':>12} {'loss jax':>12} {'loss rel':>10} {'params rel':>10} "
             f"{'no-grad rel':>11} {'BN var rel':>10} {'BN mean rel':>11}"]
    lines += [f"{r['step']:>4} {r['loss_torch']:>12.6f} {r['loss_jax']:>12.6f} {r['loss_rel']:>10.2e} "
              f"{_cell(r['params_rel'], 10)} {_cell(r['zero_grad_params_rel'], 11)} {_cell(r['running_var_rel'], 10)} "
              f"{_cell(r['running_mean_rel'], 11)}" for r in rows]
    if any(r["zero_grad_params"] for r in rows):
        lines.append(f"no-grad: the {max(r['zero_grad_params'] for r in rows)} parameters whose gradient is zero in "
                     "exact arithmetic (conv biases before a BatchNorm); Adam turns each side's rounding noise into "
                     "steps, and the BN running means add them up: both drift, and are reported, not checked")
    first = first_step_above(rows, tolerance)
    lines.append(f"first step above {tolerance:.0e} relative: {first}" if first else f"all steps within {tolerance:.0e}")
    return "\n".join(lines)


def first_step_above(rows: list[dict], tolerance: float) -> int | None:
    checked = ("loss_rel", "params_rel", "running_var_rel")
    return next((r["step"] for r in rows
                 if not max(r[k] for k in checked if r[k] is not None) <= tolerance), None)
