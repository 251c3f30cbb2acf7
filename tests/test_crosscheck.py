"""The installed cross-check: every layer of the oracle against its JAX port, and a deliberately changed layer found.

Width 4, 32 x 32 inputs, float32, XLA unoptimised (the check compiles once and runs once).
"""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the cross-check needs the torch extra")

from paresseg_jax.interop import check  # noqa: E402
from paresseg_jax.interop import torch as interop  # noqa: E402
from paresseg_jax.interop.torch_reference import harness  # noqa: E402

# A user's own PyTorch module: the oracle with one BatchNorm's eps changed (1e-5 -> 1e-3), deep in the ART encoder.
CHANGED = '''
from paresseg_jax.interop.torch_reference import RESNET_phase_att


class Changed(RESNET_phase_att):
    def __init__(self, nc):
        super().__init__(nc=nc)
        self.ART_encoder.third_1.bn[1].eps = 1e-3
'''


def test_every_layer_of_the_oracle_matches_its_port():
    model = harness.reference_model("RESNET_phase_att", 4, "reference", seed=3)
    report = check.crosscheck(model, size=32, seed=3)
    layers = interop.reference_layers(interop.reference_layout("RESNET_phase_att", 4))
    assert sorted(layers) == sorted(row["layer"] for row in report["outputs"][:-1])  # each once
    assert report["outputs"][-1]["layer"] == "logits"
    assert report["first_divergent"] is None
    assert all(row["max_rel"] <= check.TOLERANCES["float32"] for row in report["outputs"])
    assert "outputs: all within 1e-04 relative (float32)" in check.format_report(report)


def test_the_command_names_the_first_changed_layer(tmp_path):
    (tmp_path / "changed.py").write_text(CHANGED)
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.crosscheck", "--torch_module=changed.py:Changed",
                           '--torch_kwargs={"nc": 4}', "--size=32", "--json=table.json"], cwd=tmp_path,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "outputs: first layer above 1e-04 relative (float32): ART_encoder.third_1.bn.1" in done.stdout
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["first_divergent"] == "ART_encoder.third_1.bn.1"
    rows = {row["layer"]: row for row in table["outputs"]}
    assert rows["ART_encoder.third_1.bn.0"]["max_rel"] < 1e-5 < rows["ART_encoder.third_1.bn.1"]["max_rel"]


def test_float64_gradients_of_official_style_weights(tmp_path):
    """--weights loads a state_dict (.pth) into the oracle and --grads compares every parameter's gradient."""
    torch.save(harness.reference_model("RESNET_phase_att", 4, "reference", seed=5).state_dict(), tmp_path / "w.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    env = {"JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu", "PARESSEG_HUGE_PAGES": "0"}
    command = [sys.executable, "-m", "paresseg_jax_launch.crosscheck", "--width=4", "--size=32", "--dtype=float64",
               "--grads", "--json=table.json"]
    done = subprocess.run([*command, "--weights=w.pth"], cwd=tmp_path, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["first_divergent"] is None and table["first_divergent_grad"] is None
    grads = {row["layer"] for row in table["grads"]}
    assert {"PV_encoder.first.0.weight", "final.0.weight"} <= grads and len(grads) > 100
    assert all(row["max_rel"] <= check.TOLERANCES["float64"] for row in table["grads"])
    refused = subprocess.run([*command, "--weights=other.pth"], cwd=tmp_path, capture_output=True, encoding="utf-8",
                             errors="replace", timeout=600, env={**os.environ, **env})
    assert refused.returncode == 2 and "the weights do not fit the PyTorch module" in refused.stderr, refused.stderr
