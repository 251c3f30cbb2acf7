"""The spatial inter-phase attention block (`fusion='spatial'`): local windows, against a plain loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paresseg_jax import config_files, models
from paresseg_jax.models.spatial_attention import LocalPhaseAttention, local_attention


def _attention_by_loops(query, key, value, window, bias):
    """Every position's softmax over the in-map positions of its window, written out position by position."""
    batch, height, width, depth = query.shape
    r = window // 2
    out = np.zeros(value.shape, np.float64)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                logits, values = [], []
                for k, (dy, dx) in enumerate((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)):
                    y, x = i + dy, j + dx
                    if 0 <= y < height and 0 <= x < width:
                        logits.append(query[b, i, j] @ key[b, y, x] / np.sqrt(depth) + bias[k])
                        values.append(value[b, y, x])
                weights = np.exp(np.array(logits) - max(logits))
                out[b, i, j] = (weights / weights.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_local_attention_matches_a_loop_over_each_window(window):
    rng = np.random.default_rng(window)
    query, key = (rng.standard_normal((2, 5, 6, 3)) for _ in range(2))
    value = rng.standard_normal((2, 5, 6, 4))
    bias = rng.standard_normal(window * window)
    query32, key32, value32, bias32 = (jnp.asarray(a, jnp.float32) for a in (query, key, value, bias))
    got = local_attention(query32, key32, value32, window, bias32)
    np.testing.assert_allclose(got, _attention_by_loops(query, key, value, window, bias), rtol=2e-5, atol=2e-6)


def test_a_pv_position_sees_only_the_other_phase_in_its_window():
    rng = np.random.default_rng(0)
    query, key, value = (jnp.asarray(rng.standard_normal((1, 9, 9, 2)), jnp.float32) for _ in range(3))
    grads = jax.jit(jax.grad(lambda k, v: local_attention(query, k, v, window=3)[0, 4, 4].sum(), argnums=(0, 1)))(
        key, value)
    for grad in grads:
        reached = np.abs(np.asarray(grad[0])).sum(-1) > 0
        expected = np.zeros((9, 9), bool)
        expected[3:6, 3:6] = True
        np.testing.assert_array_equal(reached, expected)


def test_attention_runs_in_float32_and_without_matrix_products_in_a_bfloat16_model():
    """No dot_general a GPU could run at reduced precision, and float32 weights for bfloat16 features."""
    x = jnp.zeros((1, 8, 8, 4), jnp.bfloat16)
    block = LocalPhaseAttention(window=3, dtype=jnp.bfloat16)
    variables = block.init(jax.random.key(0), x, x)

    def loss(variables, pv, other):
        return block.apply(variables, pv, other).astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss)).trace(variables, x, x).lower(lowering_platforms=("cuda",)).as_text()
    assert "dot_general" not in lowered
    jaxpr = jax.make_jaxpr(lambda q, k, v: local_attention(q, k, v, 3))(x, x, x)
    softmax_inputs = [e.invars[0].aval.dtype for e in jaxpr.eqns if e.primitive.name == "exp"]
    assert softmax_inputs and all(d == jnp.float32 for d in softmax_inputs)
    assert block.apply(variables, x, x).dtype == jnp.bfloat16


def test_the_config_builds_a_two_phase_msf_model_with_the_block_at_every_scale():
    config = config_files.load("spatial_resseg")
    config.model.width = 4
    module = models.create(**config.model.to_dict())
    inputs = [jax.ShapeDtypeStruct((1, 40, 48, 3), jnp.float32)] * 2
    logits, variables = jax.eval_shape(lambda *x: module.init_with_output(jax.random.key(0), *x, train=False),
                                       *inputs)
    assert logits.shape == (1, 40, 48, 2)
    assert all(variables["params"][f"cf{k}"]["spa"]["position_bias"].shape == (49,) for k in range(1, 7))


def test_through_the_attention_pv_reaches_the_other_phase_branch_once_gamma_moves():
    rng = np.random.default_rng(1)
    pv, art = (jnp.asarray(rng.random((2, 8, 8, 8)), jnp.float32) for _ in range(2))
    probe = jnp.asarray(rng.standard_normal((2, 8, 8)), jnp.float32)
    block = models.FUSION_BLOCKS["spatial"]()
    variables = block.init(jax.random.key(0), pv, [art], train=False)

    @jax.jit
    @jax.grad
    def gradient(params):
        fused, _ = block.apply({**variables, "params": params}, pv, [art], train=True, mutable=["batch_stats"])
        return jnp.sum(fused[..., -1] * probe)  # the ART branch's output channel

    def grads(gamma):
        params = {**variables["params"], "spa": {**variables["params"]["spa"], "gamma": jnp.full((1,), gamma)}}
        return jax.tree.map(lambda g: float(jnp.abs(g).sum()), gradient(params))

    start, later = grads(0.0), grads(1.0)
    assert start["spa"]["gamma"] > 0  # the attention's way in
    assert start["conv5c"]["0"]["kernel"] == 0 and start["spa"]["query"]["kernel"] == 0
    for path in (("conv5c", "0", "kernel"), ("spa", "query", "kernel"), ("spa", "key", "kernel"),
                 ("spa", "position_bias")):
        leaf = later
        for key in path:
            leaf = leaf[key]
        assert leaf > 0, path
