"""paresseg-crosscheck --steps: 20 Adam steps of the PyTorch oracle and its port on identical Grain batches.

Float64 (JAX_ENABLE_X64 in the command's own process), RESNET_2D at width 4, the boundary-enhanced loss,
BatchNorm in train mode, 64 x 64 crops of a tiny cache, batch 4. Measured over the 20 steps: losses agree to
~5e-13, parameters with a gradient and BN running variances to ~2e-12. The conv biases before a BatchNorm
(gradient zero in exact arithmetic: Adam scales each side's rounding noise up by 1/eps) drift to ~2e-8, and
the running means that add them up with them; the command reports both and checks neither.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the cross-check needs the torch extra")

from test_train_support import write_tiny_cache  # noqa: E402


def test_twenty_float64_steps_stay_together(tmp_path):
    cache_dir = write_tiny_cache(tmp_path / "cache", shape=(6, 64, 64))
    # XLA's optimised CPU backend: its float64 steps run 3x faster (0.33 s), which outweighs 9 s more compilation
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu", "PARESSEG_HUGE_PAGES": "0", "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.crosscheck", "--arch=RESNET_2D", "--width=4",
                           "--steps=20", f"--cache_dir={cache_dir}", "--size=64", "--batch=4", "--loss=be",
                           "--dtype=float64", "--json=steps.json"], cwd=tmp_path, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "all steps within 1e-09" in done.stdout  # float64's default tolerance
    rows = json.loads((tmp_path / "steps.json").read_text())["steps"]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert max(max(r["loss_rel"], r["params_rel"], r["running_var_rel"]) for r in rows) < 1e-9
    assert {r["zero_grad_params"] for r in rows} == {_biases_before_batchnorm()}
    assert max(max(r["zero_grad_params_rel"], r["running_mean_rel"]) for r in rows) < 1e-6
    assert rows[-1]["loss_torch"] < rows[0]["loss_torch"]  # it trained: the loss went down in both


def _biases_before_batchnorm() -> int:
    """The oracle's conv biases that a BatchNorm follows: the parameters whose exact gradient is zero."""
    import torch

    from paresseg_jax.interop import check

    model, count = check.load_torch_model(arch="RESNET_2D", width=4), 0
    for sequential in (m for m in model.modules() if isinstance(m, torch.nn.Sequential)):
        layers = list(sequential)
        count += sum(getattr(a, "bias", None) is not None and isinstance(b, torch.nn.BatchNorm2d)
                     and not isinstance(a, torch.nn.BatchNorm2d) for a, b in zip(layers, layers[1:]))
    return count


@pytest.mark.slow  # 64 CPU-s: three float64 steps of both frameworks' two-branch model
def test_pa_resseg_with_cross_entropy_stays_together(tmp_path):
    """The two-branch model (phase attention in train mode, both encoders' BatchNorms) and the CE loss."""
    cache_dir = write_tiny_cache(tmp_path / "cache", shape=(6, 64, 64))
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu", "PARESSEG_HUGE_PAGES": "0"}
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.crosscheck", "--width=4", "--steps=3",
                           f"--cache_dir={cache_dir}", "--size=64", "--batch=4", "--loss=ce", "--dtype=float64",
                           "--json=steps.json"], cwd=tmp_path, env=env, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "steps.json").read_text())["steps"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert max(max(r["loss_rel"], r["params_rel"], r["running_var_rel"]) for r in rows) < 1e-9
    assert rows[0]["zero_grad_params"] > 0
