"""Model zoo: layers against torch, attention against float64 numpy formulas,
every registered model and fusion block at tiny width."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from paresseg_jax import config_files, models, ops
from paresseg_jax.models.attention import InterPhaseAttention, IntraPhaseAttention, inter_phase_scale
from paresseg_jax.models.layers import BatchNorm, Conv, ConvTranspose

ODD = (27, 29)  # H, W: not multiples of 32 (padded to 32x32)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


# ---------------------------------------------------------------- layers vs torch

def test_conv_matches_torch_with_hwio_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 7)).astype(np.float32)
    conv = Conv(4, 3)
    variables = conv.init(jax.random.key(0), x)
    kernel, bias = (np.array(variables["params"][k]) for k in ("kernel", "bias"))  # writable copies for torch
    assert kernel.shape == (3, 3, 7, 4)
    # torch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(kernel).max() <= 1 / math.sqrt(63) and np.abs(kernel).max() > 0.8 / math.sqrt(63)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                          torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias),
                                          padding=1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding", [(4, 2, 1), (2, 2, 0), (16, 8, 4), (3, 2, 1), (5, 3, 1)])
def test_conv_transpose_matches_torch(kernel_size, stride, padding):
    """Sub-pixel form (k - 2p = s: every model's) and the dilated form (other shapes) against torch."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 6)).astype(np.float32)
    layer = ConvTranspose(4, kernel_size, stride, padding, use_bias=True)
    variables = layer.init(jax.random.key(0), x)
    kernel, bias = (np.array(variables["params"][k]) for k in ("kernel", "bias"))  # writable copies for torch
    torch_weight = torch.from_numpy(kernel).permute(2, 3, 0, 1)  # (kh, kw, in, out) -> (in, out, kh, kw)
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch_weight,
                                                    torch.from_numpy(bias), stride=stride, padding=padding)
    expected = expected.permute(0, 2, 3, 1).numpy()
    got = layer.apply(variables, x)
    assert got.shape == expected.shape == (2, *((n - 1) * stride - 2 * padding + kernel_size for n in (5, 3)), 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding", [(4, 2, 1), (2, 2, 0)])
def test_conv_transpose_gradients_match_torch(kernel_size, stride, padding):
    """Input and kernel gradients of the sub-pixel form equal torch's conv_transpose2d's (float64)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 3))
    kernel = rng.standard_normal((kernel_size, kernel_size, 3, 2))
    cotangent = rng.standard_normal((2, 4 * stride, 5 * stride, 2))
    layer = ConvTranspose(2, kernel_size, stride, padding, dtype=jnp.float64)
    with jax.enable_x64(True):
        apply = lambda x, k: layer.apply({"params": {"kernel": k}}, x)  # noqa: E731
        _, pullback = jax.vjp(apply, jnp.asarray(x), jnp.asarray(kernel))
        dx, dk = (np.asarray(g) for g in pullback(jnp.asarray(cotangent)))
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.from_numpy(kernel).permute(2, 3, 0, 1).requires_grad_()
    out = torch.nn.functional.conv_transpose2d(tx, tw, stride=stride, padding=padding)
    out.backward(torch.from_numpy(cotangent).permute(0, 3, 1, 2))
    np.testing.assert_allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dk, tw.grad.permute(2, 3, 0, 1).numpy(), rtol=1e-10, atol=1e-10)


def test_batchnorm_matches_torch_in_train_and_eval_mode():
    rng = np.random.default_rng(2)
    torch_bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        torch_bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        torch_bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn = BatchNorm()
    batches = [(rng.standard_normal((2, 3, 4, 3)) * [1, 3, 0.2] + [0, 5, -1]).astype(np.float32) for _ in range(3)]
    variables = bn.init(jax.random.key(0), batches[0], train=False)
    params = {"scale": jnp.array([0.5, 1.5, -1.0]), "bias": jnp.array([0.1, -0.2, 0.3])}
    stats = variables["batch_stats"]
    train = jax.jit(lambda s, x: bn.apply({"params": params, "batch_stats": s}, x, train=True, mutable=["batch_stats"]))
    for x in batches:
        got, updates = train(stats, x)
        stats = updates["batch_stats"]
        expected = torch_bn.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats["var"], torch_bn.running_var.numpy(), rtol=1e-6)
    assert stats["num_batches_tracked"].dtype == jnp.int32
    assert int(stats["num_batches_tracked"]) == int(torch_bn.num_batches_tracked) == 3
    got = bn.apply({"params": params, "batch_stats": stats}, batches[0], train=False)
    expected = torch_bn.eval()(torch.from_numpy(batches[0]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_cross_replica_statistics_equal_full_batch_statistics():
    x = np.random.default_rng(3).standard_normal((4, 2, 3, 5)).astype(np.float32) * 2 + 1
    variables = BatchNorm().init(jax.random.key(0), x, train=False)

    def apply(bn, x):
        return bn.apply(variables, x, train=True, mutable=["batch_stats"])

    full, full_stats = apply(BatchNorm(), x)
    split, split_stats = jax.vmap(lambda xs: apply(BatchNorm(axis_name="r"), xs), axis_name="r")(x.reshape(2, 2, 2, 3, 5))
    np.testing.assert_allclose(split.reshape(x.shape), full, rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(split_stats["batch_stats"][key][0], full_stats["batch_stats"][key], rtol=1e-5)


def test_batchnorm_refuses_a_single_value_per_channel():
    x = jnp.ones((1, 1, 1, 2))
    variables = BatchNorm().init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])


# ------------------------------------------------------ attention vs numpy float64

def _flat(x):
    """[B, H, W, C] -> float64 [B, C, N] (the reference's X)."""
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(0, 2, 1)


def _unflat(x, like):
    return x.transpose(0, 2, 1).reshape(like.shape)


def _features(seed, shape=(2, 4, 3, 6), scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


@pytest.mark.parametrize("attention", ["reference", "paper"])
def test_intra_phase_attention_formulas(attention):
    x = _features(4)
    module = IntraPhaseAttention(attention)
    variables = module.init(jax.random.key(0), x)
    X = _flat(x)
    E = X @ X.transpose(0, 2, 1)
    if attention == "reference":
        assert np.asarray(variables["params"]["gamma"]).shape == (1,)
        np.testing.assert_array_equal(module.apply(variables, x), x)  # gamma = 0: identity at init
        variables = {"params": {"gamma": jnp.array([0.7])}}
        expected = 0.7 * softmax(E.max(-1, keepdims=True) - E, axis=-1) @ X + X
    else:
        assert "params" not in variables
        expected = softmax(E, axis=-1) @ X + X  # Eq. 1 as DANet: out_j = sum_i m_ji X_i
    np.testing.assert_allclose(module.apply(variables, x), _unflat(expected, x), rtol=1e-5, atol=1e-5)


def test_paper_intra_phase_attention_weights_sum_to_one_over_the_summed_channel():
    # A pixel where every channel is 1 adds the same 1 to every energy (the softmax ignores it) and reads
    # out the applied weights: there out_c - x_c = sum_i m_ci, which Eq. 1's m sums to one over i.
    x = _features(12, (1, 5, 4, 6), scale=0.7)
    x[0, 0, 0, :] = 1.0
    module = IntraPhaseAttention("paper")
    out = np.asarray(module.apply(module.init(jax.random.key(0), x), x))
    X = _flat(x)
    weights = softmax(X @ X.transpose(0, 2, 1), axis=-1)
    assert np.abs(weights.sum(axis=-2) - 1).max() > 0.1  # not doubly stochastic: the orientation matters
    np.testing.assert_allclose(out[0, 0, 0] - 1.0, np.ones(6), rtol=1e-5)


def test_reference_inter_phase_scale_is_sigmoid_one_for_any_input():
    for seed, scale in [(5, 1.0), (6, 100.0), (7, 1e-3)]:
        pv, art = _features(seed, scale=scale), _features(seed + 10, (2, 4, 3, 5), scale=scale)
        np.testing.assert_allclose(inter_phase_scale(pv, art, "reference"), np.full((2, 5), expit(1.0)), rtol=1e-6)


@pytest.mark.parametrize("attention", ["reference", "paper"])
def test_inter_phase_attention_formulas(attention):
    pv, art = _features(8), _features(9, (2, 4, 3, 5))
    module = InterPhaseAttention(attention)
    variables = module.init(jax.random.key(0), pv, art)
    if attention == "reference":
        np.testing.assert_array_equal(module.apply(variables, pv, art), art)  # gamma = 0: identity at init
        variables = {"params": {"gamma": jnp.array([2.0])}}
        expected = np.asarray(art, np.float64) * (1 + 2.0 * expit(1.0))
    else:
        P, A = _flat(pv), _flat(art)
        x = softmax(A @ P.transpose(0, 2, 1), axis=1)  # Eq. 2: normalised over ART channels
        expected = np.asarray(art, np.float64) * (1 + expit(x.sum(-1))[:, None, None, :])
        assert np.ptp(expit(x.sum(-1))) > 0.05  # the paper's scale depends on the input
    np.testing.assert_allclose(module.apply(variables, pv, art), expected, rtol=1e-5, atol=1e-6)


def test_attention_energies_stay_float32_under_bfloat16():
    # |E| ~ 1e3: bfloat16 energies would be off by ~4 and the softmax meaningless.
    x = _features(11, (1, 16, 16, 4), scale=2.0).astype(jnp.bfloat16)
    variables = {"params": {"gamma": jnp.array([1.0])}}
    got = IntraPhaseAttention("reference", jnp.bfloat16).apply(variables, x)
    assert got.dtype == jnp.bfloat16
    expected = IntraPhaseAttention("reference").apply(variables, x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=1e-2, atol=1e-2)


def _cuda_dot_generals(module, train: bool) -> list[str]:
    """The dot_general lines of ``module``'s forward pass (train: its loss gradient) lowered for CUDA
    with XLA's own convolutions, as on a GPU (the CPU's Winograd convolutions are matmuls too)."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

    def forward(variables, *inputs):
        if not train:
            return module.apply(variables, *inputs, train=False)
        loss = lambda params: module.apply({**variables, "params": params}, *inputs, train=True,  # noqa: E731
                                           mutable=["batch_stats"])[0].sum()
        return jax.grad(loss)(variables["params"])

    with ops.conv_impl("xla"):
        lowered = jax.jit(forward).trace(models.variable_shapes(module), *[x] * len(module.phases)).lower(
            lowering_platforms=("cuda",))
    return [line for line in lowered.as_text().splitlines() if "stablehlo.dot_general" in line]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_attention_matmul_asks_for_highest_precision_on_cuda(dtype):
    # Six PA blocks, each with two intra-PA matmuls (energy, weights @ features) and one inter-PA energy.
    module = models.create("paresseg", width=4, dtype=dtype)
    forward = _cuda_dot_generals(module, train=False)
    assert len(forward) == 6 * 3
    assert all("precision = [HIGHEST, HIGHEST]" in line and "xf32>" in line for line in forward)
    backward = _cuda_dot_generals(module, train=True)
    assert len(backward) > len(forward) and all("precision = [HIGHEST, HIGHEST]" in line for line in backward)
    loose = _cuda_dot_generals(models.create("paresseg", width=4, dtype=dtype, precise_attention=False), train=False)
    assert len(loose) == 6 * 3 and not any("HIGHEST" in line for line in loose)


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention='dot'"):
        models.create("paresseg", attention="dot")


# ------------------------------------------------------------------ fusion blocks

BUILT_IN_BLOCKS = ("pa", "intra", "concat", "sum", "weighted")
BUILT_IN_MODELS = ("resseg", "dmp_resseg", "mpf_resseg", "msf_resseg", "paresseg", "unet", "msf_unet", "pa_unet",
                   "mw_unet", "mc_fcn")


def test_registries_hold_the_built_in_names():
    assert set(BUILT_IN_BLOCKS) <= set(models.FUSION_BLOCKS)
    assert set(BUILT_IN_MODELS) <= set(models.MODELS)


@pytest.mark.parametrize("name", BUILT_IN_BLOCKS)
@pytest.mark.parametrize("num_others", [0, 1, 3])
def test_fusion_blocks_take_any_number_of_phases(name, num_others):
    pv = _features(12, (2, 4, 3, 8))
    others = [_features(13 + k, (2, 4, 3, 8)) for k in range(num_others)]
    block = models.FUSION_BLOCKS[name]()
    variables = block.init(jax.random.key(0), pv, others, train=False)
    fused, _ = block.apply(variables, pv, others, train=True, mutable=["batch_stats"])
    channels = {"pa": 2 * (1 + num_others), "intra": 2 * (1 + num_others), "concat": 8 * (1 + num_others),
                "sum": 8, "weighted": 8}
    assert fused.shape == (2, 4, 3, channels[name])
    assert np.isfinite(fused).all()


def test_weighted_block_starts_from_equal_phase_weights():
    pv, art = _features(14), _features(15)
    block = models.FUSION_BLOCKS["weighted"]()
    variables = block.init(jax.random.key(0), pv, [art], train=False)
    np.testing.assert_array_equal(variables["params"]["phase_weights"], [0.5, 0.5])
    np.testing.assert_allclose(block.apply(variables, pv, [art], train=False), 0.5 * pv + 0.5 * art, rtol=1e-6)


def test_pa_block_at_init_is_the_block_without_attention():
    """gamma = 0: intra-PA and inter-PA are identities, so the PA block equals
    the 'intra' block with the same convolutions until training moves gamma."""
    pv, art = _features(16, (2, 4, 3, 8)), _features(17, (2, 4, 3, 8))
    pa_block, intra_block = models.FUSION_BLOCKS["pa"](), models.FUSION_BLOCKS["intra"]()
    variables = pa_block.init(jax.random.key(0), pv, [art], train=False)
    assert {k: v["gamma"].tolist() for k, v in variables["params"].items() if k in ("sc", "pa")} == {
        "sc": [0.0], "pa": [0.0]}
    without_pa = {"params": {k: v for k, v in variables["params"].items() if k != "pa"},
                  "batch_stats": variables["batch_stats"]}
    np.testing.assert_array_equal(pa_block.apply(variables, pv, [art], train=False),
                                  intra_block.apply(without_pa, pv, [art], train=False))
    moved = jax.tree_util.tree_map(lambda x: x, variables)
    moved["params"]["pa"]["gamma"] = jnp.array([1.0])
    assert not np.allclose(pa_block.apply(moved, pv, [art], train=False),
                           intra_block.apply(without_pa, pv, [art], train=False))


@pytest.mark.parametrize("name", BUILT_IN_BLOCKS)
def test_fusion_block_gradients_reach_every_parameter(name):
    pv, art = _features(20, (2, 4, 3, 8)), _features(21, (2, 4, 3, 8))
    block = models.FUSION_BLOCKS[name]()
    variables = block.init(jax.random.key(0), pv, [art], train=False)
    params = jax.tree_util.tree_map(lambda x: x + 0.5, variables.get("params", {}))  # gammas off zero

    def loss(params, pv, art):
        return jnp.sum(jnp.sin(block.apply({**variables, "params": params}, pv, [art], train=False)))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, pv, art)
    assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


def test_paper_semantics_differ_from_the_reference_in_the_pa_block():
    pv, art = _features(18, (2, 4, 3, 8)), _features(19, (2, 4, 3, 8))
    reference, paper = models.FUSION_BLOCKS["pa"](), models.FUSION_BLOCKS["pa"](attention="paper")
    variables = reference.init(jax.random.key(0), pv, [art], train=False)
    paper_params = {k: v for k, v in variables["params"].items() if k not in ("sc", "pa")}  # no gammas
    paper_variables = {**variables, "params": paper_params}
    assert jax.tree_util.tree_structure(paper_variables) == jax.tree_util.tree_structure(
        paper.init(jax.random.key(0), pv, [art], train=False))
    difference = paper.apply(paper_variables, pv, [art], train=False) - reference.apply(variables, pv, [art], train=False)
    assert np.abs(difference).max() > 1e-2


# ------------------------------------------------------------------------ models

def test_parameter_counts_equal_the_reference_at_width_64():
    expected = {"paresseg": 67_732_286, "resseg": 34_794_098}
    for name, count in expected.items():
        module = models.create(name)
        shapes = models.variable_shapes(module)
        assert _count(shapes["params"]) == count


def test_reference_state_dict_paths():
    module = models.create("paresseg")
    params = models.variable_shapes(module)["params"]
    assert params["PV_encoder"]["second_1"]["bn"]["0"]["kernel"].shape == (3, 3, 64, 128)
    assert params["PV_encoder"]["second_1"]["residual"]["0"]["kernel"].shape == (1, 1, 64, 128)
    assert params["cf3"]["conv5c"]["0"]["kernel"].shape == (3, 3, 256, 64)
    assert params["cf3"]["sc"]["gamma"].shape == (1,)
    assert params["up4"]["1"]["deconv"]["0"]["kernel"].shape == (4, 4, 64, 32)
    assert params["final"]["3"]["kernel"].shape == (1, 1, 96, 2)


def _random_variables(module, seed):
    """Variables of the right structure without compiling an init: params
    drawn with numpy (kernels scaled by 1/sqrt(fan-in)), fresh BN statistics."""
    inputs = [jax.ShapeDtypeStruct((1, 32, 32, module.in_channels), jnp.float32)] * len(module.phases)
    shapes = jax.eval_shape(lambda *xs: module.init(jax.random.key(0), *xs, train=False), *inputs)
    rng = np.random.default_rng(seed)

    def draw(x):
        if x.ndim == 4:
            return rng.standard_normal(x.shape).astype(np.float32) / math.sqrt(math.prod(x.shape[:-1]))
        return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)

    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: np.ones(x.shape, x.dtype) if path[-1].key == "var" else np.zeros(x.shape, x.dtype),
        shapes["batch_stats"])
    return {"params": jax.tree_util.tree_map(draw, shapes["params"]), "batch_stats": stats}


class ModelRun:
    """One compiled train-mode run of a model at width 4 on an odd-sized
    batch: logits, parameter gradients and BN updates, plus the bfloat16
    logits with the same parameters."""

    def __init__(self, name):
        self.module = models.create(name, width=4)
        self.bf16 = models.create(name, width=4, dtype="bfloat16")
        self.variables = _random_variables(self.module, seed=len(name))
        rng = np.random.default_rng(20)
        self.inputs = [rng.uniform(0, 1, (2, *ODD, 3)).astype(np.float32) for _ in self.module.phases]

        def run(variables, inputs):
            def loss(params):
                logits, updates = self.module.apply({**variables, "params": params}, *inputs, train=True,
                                                    mutable=["batch_stats"])
                return jnp.sum(jnp.sin(logits)), (logits, updates["batch_stats"])

            (_, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
            bf16_logits, _ = self.bf16.apply(variables, *inputs, train=True, mutable=["batch_stats"])
            return logits, grads, stats, bf16_logits

        self.logits, self.grads, self.stats, self.bf16_logits = jax.jit(run)(self.variables, self.inputs)


# Compiling a model's backward pass costs ~10 s of CPU per model, so the
# fast tier runs ResSeg fully and the forward pass of one model per remaining
# class (the PA block's gradients are tested above); `-m slow` runs all.
FULL_RUN_FAST = ("resseg",)
FORWARD_FAST = ("paresseg", "mpf_resseg", "unet", "pa_unet", "mc_fcn")


def _tier(names, fast):
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


ONE_WORKER = pytest.mark.xdist_group("model_run")  # the ~30 s fixture is built by one xdist worker, not each


@pytest.fixture(scope="module", params=_tier(BUILT_IN_MODELS, FULL_RUN_FAST))
def model_run(request):
    return ModelRun(request.param)


@pytest.mark.parametrize("name", BUILT_IN_MODELS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_model_traces_at_an_odd_size(name, dtype):
    module = models.create(name, width=4, dtype=dtype)
    inputs = [jax.ShapeDtypeStruct((2, *ODD, 3), jnp.float32)] * len(module.phases)
    logits = jax.eval_shape(lambda *x: module.init_with_output(jax.random.key(0), *x, train=False)[0], *inputs)
    assert logits.shape == (2, *ODD, 2) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", _tier(BUILT_IN_MODELS, FORWARD_FAST + FULL_RUN_FAST))
def test_jitted_forward_at_an_odd_size(name):
    module = models.create(name, width=4)
    variables = _random_variables(module, seed=1)
    inputs = [np.random.default_rng(k).uniform(0, 1, (2, *ODD, 3)).astype(np.float32) for k in range(len(module.phases))]
    logits = jax.jit(lambda v, x: module.apply(v, *x, train=False))(variables, inputs)
    assert logits.shape == (2, *ODD, 2) and np.isfinite(logits).all() and np.std(logits) > 0


@ONE_WORKER
def test_model_logits_have_the_input_size(model_run):
    for logits in (model_run.logits, model_run.bf16_logits):
        assert logits.shape == (2, *ODD, 2) and logits.dtype == jnp.float32
        assert np.isfinite(logits).all()
    assert model_run.module.phases[0] == "pv" and model_run.module.in_channels == 3


def _feeds_batchnorm(path, params) -> bool:
    """A conv bias at Sequential index i with a BatchNorm at index i + 1."""
    *parents, layer, leaf = [k.key for k in path]
    if leaf != "bias" or not layer.isdigit():
        return False
    siblings = functools.reduce(lambda tree, key: tree[key], parents, params)
    return "scale" in siblings.get(str(int(layer) + 1), {})


@ONE_WORKER
def test_gradients_reach_every_parameter(model_run):
    """Every parameter gets a gradient, except conv biases right before a
    train-mode BatchNorm, whose true gradient is zero (the BN removes them)."""
    leaves = jax.tree_util.tree_leaves_with_path(model_run.grads)
    before_bn = [np.abs(g).max() for p, g in leaves if _feeds_batchnorm(p, model_run.grads)]
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not _feeds_batchnorm(p, model_run.grads) and not np.any(g)]
    assert not dead
    typical = np.median([np.abs(g).max() for _, g in leaves])
    assert max(before_bn, default=0.0) < 1e-3 * typical


@ONE_WORKER
def test_train_mode_updates_every_batchnorm(model_run):
    leaves = jax.tree_util.tree_leaves_with_path(model_run.stats)
    assert {int(x) for p, x in leaves if p[-1].key == "num_batches_tracked"} == {1}
    assert all(np.any(x != 0) for p, x in leaves if p[-1].key == "mean")


@ONE_WORKER
def test_bfloat16_follows_float32(model_run):
    # Same parameters, bfloat16 compute: close to float32 relative to the logits' spread.
    spread = np.std(model_run.logits)
    assert np.abs(model_run.bf16_logits - model_run.logits).mean() < 0.1 * spread


def test_init_variables_and_padding_to_multiples_of_32():
    """A 45x37 slice gives the top-left 27x29 logits of the same slice
    zero-padded to 32x32 (which passes through unpadded)."""
    module = models.create("resseg", width=4)
    variables = models.init_variables(module, jax.random.key(1), height=64, width=32, batch=2)
    assert sorted(variables) == ["batch_stats", "params"]
    bn = variables["batch_stats"]["final"]["1"]
    assert (np.all(bn["mean"] == 0) and np.all(bn["var"] == 1) and bn["num_batches_tracked"] == 0)
    x = np.random.default_rng(21).uniform(0, 1, (1, *ODD, 3)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 32 - ODD[0]), (0, 32 - ODD[1]), (0, 0)))
    apply = jax.jit(lambda v, x, p: (module.apply(v, x, train=False), module.apply(v, p, train=False)))
    cropped, full = apply(variables, x, padded)
    assert full.shape == (1, 32, 32, 2)
    np.testing.assert_allclose(cropped, full[:, :ODD[0], :ODD[1]], rtol=1e-5, atol=1e-5)


def test_an_equal_model_reuses_the_compiled_initialiser_and_the_traced_shapes(monkeypatch):
    """Folds and ensemble members build equal modules: one compilation of the initialiser and one trace of the
    shapes serve them all, with the values an uncached initialiser gives for each seed."""
    models._traced_shapes.cache_clear()
    traces = []
    real_eval_shape = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: traces.append(1) or real_eval_shape(*a, **k))
    first, second, other = (models.create("resseg", width=4), models.create("resseg", width=4),
                            models.create("resseg", width=8))
    shapes = models.variable_shapes(first)
    models.variable_shapes(first)["params"] = None  # the caller's tree is its own: the cached one is not changed
    assert jax.tree.map(lambda s: (s.shape, s.dtype), models.variable_shapes(second)) == jax.tree.map(
        lambda x: (x.shape, x.dtype), models.init_variables(first, jax.random.key(0)))
    assert _count(models.variable_shapes(other)) > _count(shapes)
    assert len(traces) == 2  # width 4 once, width 8 once

    uncached = {seed: jax.jit(models._init_function(first, 32, 32, 1))(jax.random.key(seed)) for seed in (3, 4)}
    jits = []
    real_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda *a, **k: jits.append(1) or real_jit(*a, **k))
    for seed in (3, 4):
        jax.tree.map(np.testing.assert_array_equal, models.init_variables(second, jax.random.key(seed)), uncached[seed])
    assert jits == []  # first's initialiser, compiled above, serves second
    with pytest.raises(AssertionError):  # the seed reaches the cached initialiser
        jax.tree.map(np.testing.assert_array_equal, models.init_variables(second, jax.random.key(3)),
                     models.init_variables(second, jax.random.key(4)))


def test_create_refuses_bad_options():
    with pytest.raises(ValueError, match="unknown"):
        models.create("resnet")
    with pytest.raises(ValueError, match="no option"):
        models.create("resseg", depth=3)
    with pytest.raises(ValueError, match="'pv' first"):
        models.create("paresseg", phases=("art", "pv"))
    with pytest.raises(ValueError, match="not a registered fusion block"):
        models.create("msf_resseg", fusion="attention")
    with pytest.raises(ValueError, match="dtype"):
        models.create("resseg", dtype="float16")
    module = models.create("paresseg", width=4)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match="in_channels"):
        module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 4)), train=False)
    with pytest.raises(ValueError, match="same shape"):
        module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 31, 3)), train=False)


CONFIGS = config_files.builtin_names()


@pytest.mark.parametrize("config_name", CONFIGS)
def test_every_config_builds_its_model(config_name):
    config = config_files.load(config_name)
    options = {**config.model.to_dict(), "width": 4}
    module = models.create(**options)
    inputs = [jax.ShapeDtypeStruct((1, *ODD, module.in_channels), jnp.float32)] * len(module.phases)
    logits, _ = jax.eval_shape(lambda *x: module.init_with_output(jax.random.key(0), *x, train=False), *inputs)
    assert logits.shape == (1, *ODD, config.model.num_classes)


@pytest.mark.parametrize("name", ["paresseg", "dmp_resseg", "mpf_resseg", "mc_fcn"])
def test_more_than_two_phases(name):
    """NC and DL as extra phases, each fused against PV (one encoder each)."""
    module = models.create(name, width=4, phases=("pv", "art", "nc", "dl"))
    inputs = [jax.ShapeDtypeStruct((1, *ODD, 3), jnp.float32)] * 4
    logits, variables = jax.eval_shape(lambda *x: module.init_with_output(jax.random.key(0), *x, train=False), *inputs)
    assert logits.shape == (1, *ODD, 2)
    if name == "paresseg":
        assert {"PV_encoder", "ART_encoder", "NC_encoder", "DL_encoder"} <= set(variables["params"])
        assert {"pa", "pa_1", "pa_2", "conv52_2"} <= set(variables["params"]["cf1"])
