"""One pure train step; parallelism wraps it (``parallel.py``); validation runs inference itself (``validate.py``).

``train_step(state, batch) -> (state, metrics)`` has no Python side effects
and never leaves the device: a non-finite loss or gradient does not raise,
it keeps the old state (one ``lax.cond``) and reports ``nonfinite = 1`` so the
host loop can count consecutive skips without a synchronisation.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from paresseg_jax import huge_pages
from paresseg_jax.losses import LossFn
from paresseg_jax.train.state import TrainState


def model_inputs(module: nn.Module, batch: dict) -> list[jax.Array]:
    """One input per phase, in the module's phase order (PV first)."""
    missing = [p for p in module.phases if p not in batch]
    if missing:
        raise KeyError(f"batch has keys {sorted(batch)} but the model needs phases {module.phases}")
    return [batch[p] for p in module.phases]


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    schedule: optax.Schedule,
    axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The step for ``module``; ``axis_name`` is the pmap axis (None under jit or one device).

    Under pmap the loss and gradients are averaged over ``axis_name`` (the
    module's BatchNorm must use the same ``bn_axis_name`` for cross-replica
    statistics); under jit the batch is one global array and XLA inserts the
    reductions, so the same function serves both. On CPU without glibc's
    huge-page malloc it logs one warning per process (``huge_pages``).
    """
    huge_pages.warn_if_missing_on_cpu()

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = _step_rng(state, axis_name)

        def compute_loss(params):
            logits, updates = module.apply(
                {"params": params, "batch_stats": state.batch_stats},
                *model_inputs(module, batch),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            return loss_fn(logits, batch["label"], batch["weight"]), updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        if axis_name is not None:
            loss, grads = jax.lax.pmean((loss, grads), axis_name)
        # One reduction serves the guard and the metric: a NaN or inf anywhere in the gradients (or squares
        # beyond float32, |g| > ~1e19) makes their norm non-finite. Finite gradients give finite updates,
        # so the new parameters need no pass of their own (2.9% of a PA-ResSeg CPU step).
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(params, opt_state, _old_batch_stats):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, batch_stats

        # Adam runs inside the taken branch, so XLA updates the donated state in place; computed before
        # the branch, new and old state were both live and the branch copied one (PA-ResSeg: 140 -> 55 ms
        # per step on CPU). One branch for the whole tree: an elementwise select per leaf made XLA CPU
        # compile PA-ResSeg's step for many minutes and >10 GB (one fusion over every parameter).
        params, opt_state, batch_stats = jax.lax.cond(
            finite, apply_update, lambda *old: old, state.params, state.opt_state, state.batch_stats
        )
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "nonfinite": (~finite).astype(jnp.int32)}
        return new_state, metrics

    return train_step


def _step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
    """Dropout key of this step: the state's key folded with the step, and with the device under pmap."""
    rng = jax.random.fold_in(state.rng, state.step)
    return rng if axis_name is None else jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

