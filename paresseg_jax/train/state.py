"""What defines "where training is": the train state and its optimizer.

The state is a plain pytree (``flax.struct``) so that one pure step function
can be jitted, pmapped or sharded, and orbax can save and restore it as is.
Parameters and optimizer state are always float32, whatever the compute
dtype of the model (mixed precision keeps the master weights exact).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine")


@flax.struct.dataclass
class TrainState:
    """Step counter, variables, Adam state and the RNG of the stochastic layers."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        """``{'params', 'batch_stats'}``, what ``module.apply`` and ``model_io`` take."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(train_config: Mapping, num_steps: int) -> optax.Schedule:
    """The reference trains at a constant 5e-4; ``cosine`` adds warmup and decay to 0."""
    name = train_config.get("schedule", "constant")
    lr = float(train_config.get("learning_rate", 5e-4))
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        warmup = int(train_config.get("warmup_steps", 0))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
    raise ValueError(f"unknown schedule {name!r} (config.train.schedule); choose one of {SCHEDULES}")


def make_optimizer(train_config: Mapping, num_steps: int) -> optax.GradientTransformation:
    """Adam as in the reference (no weight decay unless ``weight_decay`` > 0: AdamW)."""
    schedule = learning_rate_schedule(train_config, num_steps)
    weight_decay = float(train_config.get("weight_decay", 0.0))
    if weight_decay > 0:
        return optax.adamw(schedule, weight_decay=weight_decay)
    return optax.adam(schedule)


def create_train_state(variables: Mapping, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 from ``models.init_variables`` output."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)), variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
    )
