"""The PyTorch oracle itself: reference state_dict layout, parameter counts, attention semantics."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from paresseg_jax.interop.torch_reference import RESNET_2D, RESNET_phase_att
from paresseg_jax.interop.torch_reference import networks
from paresseg_jax.interop.torch_reference.networks import FANetHead, InterPhaseAttention, IntraPhaseAttention

KEYS_JSON = Path(networks.__file__).with_name("state_dict_keys.json")  # the reference's own state_dict keys
PARAMETER_COUNTS = {"RESNET_phase_att": 67_732_286, "RESNET_2D": 34_794_098}


def _reference_layout():
    return json.loads(KEYS_JSON.read_text())["models"]


def _build(name, **options):
    return RESNET_phase_att(**options) if name == "RESNET_phase_att" else RESNET_2D(**options)


@pytest.mark.parametrize("name", ["RESNET_phase_att", "RESNET_2D"])
def test_state_dict_layout_equals_reference(name):
    expected = _reference_layout()[name]
    with torch.device("meta"):
        model = _build(name)
    state = model.state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]
    # The counts also follow from the reference's shapes alone (buffers excluded).
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(math.prod(s) for k, s in expected.items() if k.rsplit(".", 1)[1] not in buffers) == PARAMETER_COUNTS[name]


def test_paper_attention_layout_is_the_reference_without_gammas():
    expected = {k: v for k, v in _reference_layout()["RESNET_phase_att"].items() if not k.endswith(".gamma")}
    with torch.device("meta"):
        state = RESNET_phase_att(attention="paper").state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert list(state) == list(expected)


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention="):
        RESNET_phase_att(nc=4, attention="dot")


def _features(rng, shape=(2, 5, 3, 4)):
    return rng.standard_normal(shape) * 0.5


def test_intra_phase_attention_reference_and_paper_semantics():
    rng = np.random.default_rng()
    x = _features(rng)
    gamma = rng.standard_normal()
    flat = x.reshape(2, 5, -1)
    energy = flat @ flat.transpose(0, 2, 1)
    expected = {
        # softmax(rowmax(E) - E) is softmax(-E): the reference attends to the *least* similar channels.
        "reference": gamma * softmax(-energy, axis=-1) @ flat + flat,
        # Eq. 1 read as DANet: out_j = sum_i m_ji X_i, weights summing to one over the summed channel i.
        "paper": softmax(energy, axis=-1) @ flat + flat,
    }
    for attention, want in expected.items():
        module = IntraPhaseAttention(attention).double()
        if attention == "reference":
            module.gamma.data.fill_(gamma)
        got = module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want.reshape(x.shape), rtol=1e-12, atol=1e-12)


def test_inter_phase_attention_reference_and_paper_semantics():
    rng = np.random.default_rng()
    pv, art = _features(rng), _features(rng)
    gamma = rng.standard_normal()
    flat_art = art.reshape(2, 5, -1)
    energy = flat_art @ pv.reshape(2, 5, -1).transpose(0, 2, 1)
    paper_weights = expit(softmax(energy, axis=1).sum(axis=-1, keepdims=True))
    expected = {
        # Each softmax row sums to 1, so the reference's weights are sigmoid(1) for every channel.
        "reference": art * (1 + expit(1.0) * gamma),
        "paper": (paper_weights * flat_art + flat_art).reshape(art.shape),
    }
    for attention, want in expected.items():
        module = InterPhaseAttention(attention).double()
        if attention == "reference":
            module.gamma.data.fill_(gamma)
        got = module(torch.from_numpy(pv), torch.from_numpy(art)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fusion_head_and_models_output_shapes():
    head = FANetHead(16, "reference")
    assert head(torch.rand(1, 16, 8, 8), torch.rand(1, 16, 8, 8)).shape == (1, 8, 8, 8)
    x = torch.rand(1, 3, 64, 96)
    assert RESNET_phase_att(nc=4)(x, x).shape == (1, 2, 64, 96)
    assert RESNET_2D(num_classes=3, num_channels=1, nc=4)(x[:, :1]).shape == (1, 3, 64, 96)
