"""The train step: pmap == jit == one device, mixed precision, non-finite skips.

Equivalence is checked in float64 on 8 fake CPU devices (a subprocess, so the
device count and x64 do not leak into other tests): in float32 the channel
attention's near-one-hot softmax turns reduction-order rounding into visible
differences, which would hide real
bugs behind a loose tolerance.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train_support import TinySeg, random_batch, run_script

EQUIVALENCE = r"""
import json, jax, numpy as np, jax.numpy as jnp, optax
jax.config.update("jax_enable_x64", True)
from test_train_support import TinySeg, random_batch
from paresseg_jax import losses, models
from paresseg_jax.train import parallel as P, state as S, step as T

def run(mode):
    par = P.DataParallel(mode) if mode else None
    axis = par.bn_axis_name if par else None
    module = MODEL
    variables = models.init_variables(module, jax.random.PRNGKey(0), HW, HW)
    variables = jax.tree.map(lambda x: np.asarray(x, np.float64), variables)
    # Adam with eps 1e-4, not the reference's 1e-8: a conv bias right before a BN has a zero gradient in exact
    # arithmetic, and Adam (update ~ lr * g / eps where |g| << eps) turns its rounding residue, which differs
    # with each reduction order, into moves of ~1e-10 (PA-ResSeg: 1.8e-11 relative); with 1e-4 they stay ~1e-14.
    tx = optax.adam(S.learning_rate_schedule({"learning_rate": 1e-2}, 3), eps=1e-4)
    state = S.create_train_state(variables, tx, 0)
    step = T.make_train_step(module, tx, losses.get_loss("be"), S.learning_rate_schedule({}, 3), axis)
    step = par.wrap_train_step(step) if par else jax.jit(step, donate_argnums=0)
    state = par.put_state(state) if par else state
    rng = np.random.default_rng(1)
    losses_seen = []
    for _ in range(3):
        batch = random_batch(rng, 8, HW, np.float64)
        state, metrics = step(state, par.put_batch(batch) if par else batch)
        losses_seen.append(par.host_metrics(metrics)["loss"] if par else float(metrics["loss"]))
    host = par.host_state(state) if par else jax.device_get(state)
    return host, losses_seen, variables["params"]

def rel(a, b):
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(np.sum(np.asarray(x) ** 2)) for x in jax.tree.leaves(a))
    return (num / den) ** 0.5

assert jax.device_count() == 8
single, l1, init = run(None)
out = {"devices": jax.device_count()}
for mode in ("pmap", "jit"):
    other, l2, _ = run(mode)
    out[mode] = {
        "params": rel(single.params, other.params),
        "batch_stats": rel(single.batch_stats, other.batch_stats),
        "opt_state": rel(single.opt_state, other.opt_state),
        "loss": max(abs(a - b) for a, b in zip(l1, l2)),
        "step": int(np.asarray(other.step)),
    }
out["moved"] = rel(init, single.params)
print("RESULT" + json.dumps(out))
"""


def _equivalence(model: str, hw: int) -> dict:
    out = run_script(EQUIVALENCE.replace("MODEL", model).replace("HW", str(hw)), devices=8, timeout=3000)
    result = json.loads(out.split("RESULT")[-1])
    print(result)
    for mode in ("pmap", "jit"):
        assert result[mode]["step"] == 3
        for key in ("params", "batch_stats", "opt_state"):
            assert result[mode][key] < 1e-12, (mode, key, result[mode][key])
        assert result[mode]["loss"] < 1e-12
    assert result["moved"] > 1e-3  # the three steps did change the parameters
    return result


def test_pmap_jit_and_one_device_agree_after_three_steps_float64():
    _equivalence("TinySeg(width=4, dtype=jnp.float64, bn_axis_name=axis)", 16)


@pytest.mark.timeout(3600)
@pytest.mark.slow  # the real PA-ResSeg step compiles for minutes on 2 CPU cores (three times here)
def test_paresseg_pmap_jit_and_one_device_agree_float64():
    _equivalence('models.create("paresseg", width=4, dtype="float64", bn_axis_name=axis)', 32)


def _tiny_setup(dtype="float32", lr=1e-2):
    from paresseg_jax import losses, models
    from paresseg_jax.train import state as S, step as T

    module = TinySeg(width=4, dtype=models.DTYPES[dtype])
    variables = models.init_variables(module, jax.random.PRNGKey(0), 16, 16)
    tx = S.make_optimizer({"learning_rate": lr}, 10)
    state = S.create_train_state(variables, tx, 0)
    step = jax.jit(T.make_train_step(module, tx, losses.get_loss("ce"), S.learning_rate_schedule({"learning_rate": lr}, 10)))
    return state, step


def test_bfloat16_step_tracks_float32_and_keeps_float32_master_weights():
    """bf16 compute (eps ~8e-3): the loss over 5 steps stays within 2% of float32."""
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, 4) for _ in range(5)]
    curves, finals = {}, {}
    for dtype in ("float32", "bfloat16"):
        state, step = _tiny_setup(dtype)
        curves[dtype] = []
        for batch in batches:
            state, metrics = step(state, batch)
            curves[dtype].append(float(metrics["loss"]))
        finals[dtype] = state
    gap = np.max(np.abs(np.array(curves["bfloat16"]) - curves["float32"]) / np.array(curves["float32"]))
    print("losses", curves, "max relative gap", gap)
    assert gap < 0.02
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(finals["bfloat16"].params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(finals["bfloat16"].opt_state) if x.dtype.kind == "f")


def test_non_finite_batch_skips_the_update_and_is_counted():
    state, step = _tiny_setup()
    rng = np.random.default_rng(0)
    state, metrics = step(state, random_batch(rng, 4))
    assert int(metrics["nonfinite"]) == 0
    before = jax.device_get(state)
    bad = random_batch(rng, 4)
    bad["pv"][0, 0, 0, 0] = np.nan
    state, metrics = step(state, bad)
    assert int(metrics["nonfinite"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state)
    assert int(after.step) == 2
    for name in ("params", "batch_stats", "opt_state"):
        for x, y in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
            np.testing.assert_array_equal(x, y, err_msg=name)
    state, metrics = step(state, random_batch(rng, 4))
    assert int(metrics["nonfinite"]) == 0
    assert np.all(np.isfinite(jax.tree.leaves(jax.device_get(state.params))[0]))


def test_finite_loss_with_a_non_finite_gradient_is_skipped_too():
    from paresseg_jax.train import state as S, step as T

    state, _ = _tiny_setup()
    module = TinySeg(width=4)
    tx = S.make_optimizer({"learning_rate": 1e-2}, 10)

    def sqrt_at_zero(logits, label, weight):  # value 0, gradient 0 * inf = NaN
        return jnp.sum(jnp.sqrt(jnp.abs(logits) * 0.0))

    step = jax.jit(T.make_train_step(module, tx, sqrt_at_zero, lambda _: 1e-2))
    before = jax.device_get(state)
    state, metrics = step(state, random_batch(np.random.default_rng(0), 4))
    assert float(metrics["loss"]) == 0.0 and int(metrics["nonfinite"]) == 1
    assert not np.isfinite(float(metrics["grad_norm"]))
    for x, y in zip(jax.tree.leaves(before.params), jax.tree.leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(x, y)


def test_unknown_parallel_mode_and_bad_batch_size_are_clear_errors():
    from paresseg_jax.train.parallel import DataParallel

    with pytest.raises(ValueError, match="pmap"):
        DataParallel("ddp")
    # In-process there is one CPU device, and every batch size divides by 1: 8 simulated devices.
    out = run_script(
        "from paresseg_jax.train.parallel import DataParallel\n"
        "for mode in ('jit', 'pmap'):\n"
        "    parallel = DataParallel(mode)\n"
        "    parallel.check_batch_size(16)\n"
        "    try:\n"
        "        parallel.check_batch_size(12)\n"
        "    except ValueError as e:\n"
        "        print(mode, e)\n",
        devices=8,
    )
    assert out.count("config.train.batch_size=12 is not divisible by the 8 devices; use a multiple of 8") == 2, out
