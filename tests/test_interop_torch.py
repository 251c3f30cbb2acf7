"""paresseg_jax.interop.torch: layout, conversion both ways, errors, safe checkpoint loading, paresseg-convert."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from paresseg_jax import model_io, models
from paresseg_jax.interop import torch as interop
from paresseg_jax.interop.torch_reference import RESNET_2D, RESNET_phase_att
from paresseg_jax.interop.torch_reference import harness
from paresseg_jax.interop.torch_reference.harness import reference_model

REPO = Path(__file__).resolve().parents[1]
KEYS_JSON = Path(harness.__file__).with_name("state_dict_keys.json")  # the reference's own state_dict keys
# (reference class, attention) of every convertible model.
VARIANTS = [("RESNET_2D", "reference"), ("RESNET_phase_att", "reference"), ("RESNET_phase_att", "paper")]


def _oracle(arch, attention, **sizes):
    if arch == "RESNET_2D":
        return RESNET_2D(**sizes)
    return RESNET_phase_att(attention=attention, **sizes)


def _random_flax_variables(spec, rng):
    """Random values (floats and counters) in the tree `init_variables` gives for `spec`."""
    module = models.create(**spec)
    abstract = models.variable_shapes(module)

    def draw(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            return rng.integers(0, 10_000, leaf.shape).astype(leaf.dtype)
        return rng.standard_normal(leaf.shape).astype(leaf.dtype)

    return abstract, jax.tree.map(draw, abstract)


@pytest.mark.parametrize("arch", ["RESNET_phase_att", "RESNET_2D"])
def test_layout_is_the_reference_state_dict(arch):
    expected = json.loads(KEYS_JSON.read_text())["models"][arch]
    layout = interop.reference_layout(arch)
    assert list(layout) == list(expected)
    assert {k: list(shape) for k, (shape, _) in layout.items()} == expected


@pytest.mark.parametrize("arch, attention", VARIANTS)
def test_layout_follows_the_oracle_at_other_sizes(arch, attention):
    with torch.device("meta"):
        state = _oracle(arch, attention, num_classes=3, num_channels=1, nc=4).state_dict()
    layout = interop.reference_layout(arch, width=4, in_channels=1, num_classes=3, attention=attention)
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [(k, shape) for k, (shape, _) in layout.items()]


@pytest.mark.parametrize("arch, attention", VARIANTS)
def test_converted_variables_fit_the_flax_model(arch, attention):
    state = _oracle(arch, attention, num_classes=3, num_channels=1, nc=4).state_dict()
    spec = interop.spec_from_state_dict(state)
    expected_spec = {"name": interop.ARCHITECTURES[arch], "width": 4, "in_channels": 1, "num_classes": 3}
    if arch == "RESNET_phase_att":
        expected_spec["attention"] = attention
    assert spec == expected_spec
    variables = interop.from_torch_state_dict(state)
    abstract = models.variable_shapes(models.create(**spec))
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    same = jax.tree.map(lambda v, a: (v.shape, v.dtype) == (a.shape, a.dtype), variables, abstract)
    assert all(jax.tree.leaves(same))


def test_conv_and_transposed_conv_kernels_land_in_flax_layout():
    state = reference_model("RESNET_2D", 4, "reference", seed=3).state_dict()
    params = interop.from_torch_state_dict(state)["params"]
    conv = state["second_1.bn.0.weight"].numpy()  # (out, in, kh, kw)
    deconv = state["up3.0.deconv.0.weight"].numpy()  # (in, out, kh, kw)
    assert params["second_1"]["bn"]["0"]["kernel"][2, 0, 3, 7] == conv[7, 3, 2, 0]
    assert params["up3"]["0"]["deconv"]["0"]["kernel"][3, 1, 9, 2] == deconv[9, 2, 3, 1]
    stats = interop.from_torch_state_dict(state)["batch_stats"]["first"]["1"]
    np.testing.assert_array_equal(stats["var"], state["first.1.running_var"].numpy())
    assert int(stats["num_batches_tracked"]) == int(state["first.1.num_batches_tracked"])


@pytest.mark.parametrize("arch, attention", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_torch_flax_torch_is_exact(arch, attention, dtype):
    state = reference_model(arch, 4, attention, seed=int.from_bytes(os.urandom(2), "little"), dtype=dtype).state_dict()
    back = interop.to_torch_state_dict(interop.from_torch_state_dict(state), arch)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("arch, attention", VARIANTS)
def test_round_trip_flax_torch_flax_is_exact(arch, attention):
    spec = {"name": interop.ARCHITECTURES[arch], "width": 4, "in_channels": 2, "num_classes": 3}
    if arch == "RESNET_phase_att":
        spec["attention"] = attention
    abstract, variables = _random_flax_variables(spec, np.random.default_rng())
    state = interop.to_torch_state_dict(variables, arch)
    assert interop.spec_from_state_dict(state) == spec
    back = interop.from_torch_state_dict(state)
    assert jax.tree.structure(back) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_state_dict_wrapper_prefix_and_numpy_values_are_accepted():
    state = reference_model("RESNET_phase_att", 4, "reference", seed=5).state_dict()
    wrapped = {"state_dict": {f"module.{k}": v.numpy() for k, v in state.items()}, "epoch": 7}
    assert interop.spec_from_state_dict(wrapped)["name"] == "paresseg"
    got = jax.tree.leaves(interop.from_torch_state_dict(wrapped))
    want = jax.tree.leaves(interop.from_torch_state_dict(state, arch="RESNET_phase_att"))
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def _small_state(arch="RESNET_phase_att"):
    with torch.device("meta"):
        meta = _oracle(arch, "reference", nc=4).state_dict()
    return {k: np.zeros(v.shape, np.int64 if k.endswith("tracked") else np.float32) for k, v in meta.items()}


def test_missing_unexpected_and_misshapen_keys_are_named():
    state = _small_state()
    del state["cf3.conv52.1.running_var"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['cf3.conv52.1.running_var'\]"):
        interop.from_torch_state_dict(state)

    state = _small_state()
    state["cf1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['cf1.extra.weight'\]"):
        interop.from_torch_state_dict(state)

    state = _small_state()
    state["up3.1.deconv.0.weight"] = np.zeros((8, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"'up3.1.deconv.0.weight' has shape \(8, 4, 4, 4\).*needs \(32, 16, 4, 4\)"):
        interop.from_torch_state_dict(state)

    with pytest.raises(ValueError, match="cannot tell the reference architecture"):
        interop.from_torch_state_dict({"encoder.conv.weight": np.zeros((4, 3, 3, 3))})
    with pytest.raises(ValueError, match="arch='ResNet50' is not a reference architecture"):
        interop.from_torch_state_dict(_small_state(), arch="ResNet50")
    with pytest.raises(ValueError, match="state_dict has no key 'first.0.weight'"):
        interop.from_torch_state_dict(_small_state(), arch="RESNET_2D")


def test_flax_variables_without_a_reference_counterpart_are_refused():
    spec = {"name": "paresseg", "width": 4, "in_channels": 3, "num_classes": 2}
    _, variables = _random_flax_variables(spec, np.random.default_rng(0))
    variables["params"]["cf2"]["conv5p_1"] = {"0": {"kernel": np.zeros((3, 3, 8, 2), np.float32)}}
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['params/cf2/conv5p_1/0/kernel'\]"):
        interop.to_torch_state_dict(variables, "RESNET_phase_att")
    with pytest.raises(ValueError, match="variables have no 'params/first/0/kernel'"):
        interop.to_torch_state_dict(variables, "RESNET_2D")
    with pytest.raises(ValueError, match="'msf_resseg' has no PyTorch reference counterpart"):
        interop.arch_from_spec({"name": "msf_resseg"})


def test_load_torch_checkpoint_accepts_wrappers_and_refuses_pickled_code(tmp_path):
    state = reference_model("RESNET_2D", 4, "reference", seed=2).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    loaded = interop.load_torch_checkpoint(tmp_path / "wrapped.pth")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], v) for k, v in state.items())

    torch.save(RESNET_2D(nc=4), tmp_path / "whole_model.pth")  # unpickling it would import and run code
    with pytest.raises(ValueError, match="arbitrary code; refused"):
        interop.load_torch_checkpoint(tmp_path / "whole_model.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        interop.load_torch_checkpoint(tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth: no PyTorch checkpoint"):
        interop.load_torch_checkpoint(tmp_path / "absent.pth")


def test_conversion_to_flax_does_not_need_torch():
    """torch is an optional extra: numpy state_dicts convert with torch unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from paresseg_jax.interop import torch as interop\n"
            "layout = interop.reference_layout('RESNET_2D', width=4)\n"
            "state = {k: np.zeros(shape, np.float32) for k, (shape, _) in layout.items()}\n"
            "assert interop.from_torch_state_dict(state)['params']['first']['0']['kernel'].shape == (3, 3, 3, 4)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torch_checkpoint_to_saved_model_and_back(tmp_path):
    state = reference_model("RESNET_phase_att", 4, "paper", seed=int.from_bytes(os.urandom(2), "little")).state_dict()
    torch.save({"state_dict": state}, tmp_path / "reference.pth")
    interop.torch_checkpoint_to_saved_model(tmp_path / "reference.pth", tmp_path / "saved")
    module, _, spec = model_io.load_model(tmp_path / "saved")
    assert spec == {"name": "paresseg", "width": 4, "in_channels": 3, "num_classes": 2, "attention": "paper"}
    assert module.phases == ("pv", "art") and module.attention == "paper"
    written = interop.saved_model_to_torch_checkpoint(tmp_path / "saved", tmp_path / "out" / "back.pth")
    back = torch.load(written, weights_only=True)
    assert list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())


@pytest.mark.slow
def test_convert_command_both_ways(tmp_path):
    """paresseg-convert as users run it: .pth -> saved model -> .pth."""
    state = reference_model("RESNET_2D", 4, "reference", seed=int.from_bytes(os.urandom(2), "little")).state_dict()
    torch.save(state, tmp_path / "reference.pth")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for source, target in (("reference.pth", "saved"), ("saved", "back.pth")):
        command = [sys.executable, "-m", "paresseg_jax_launch.convert", f"--input={tmp_path / source}",
                   f"--output={tmp_path / target}"]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())
    assert model_io.load_model(tmp_path / "saved")[2]["name"] == "resseg"
