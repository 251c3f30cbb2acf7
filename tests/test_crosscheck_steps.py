"""paresseg-crosscheck --steps: 20 Adam steps of the PyTorch oracle and its port on identical Grain batches.

Float64 (JAX_ENABLE_X64 in the command's own process), RESNET_2D at width 4, the boundary-enhanced loss,
BatchNorm in train mode, 64 x 64 crops of a tiny cache, batch 4. Measured: losses agree to ~5e-13 over the
20 steps; the largest per-tensor parameter difference grows to ~2e-8 and the BN running statistics to ~2e-8.
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
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu", "PARESSEG_HUGE_PAGES": "0"}
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.crosscheck", "--arch=RESNET_2D", "--width=4",
                           "--steps=20", f"--cache_dir={cache_dir}", "--size=64", "--batch=4", "--loss=be",
                           "--dtype=float64", "--tolerance=1e-7", "--json=steps.json"], cwd=tmp_path, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "all steps within 1e-07" in done.stdout
    rows = json.loads((tmp_path / "steps.json").read_text())["steps"]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert max(r["loss_rel"] for r in rows) < 1e-9
    assert max(max(r["params_rel"], r["running_stats_rel"]) for r in rows) < 1e-7
    assert rows[-1]["loss_torch"] < rows[0]["loss_torch"]  # it trained: the loss went down in both
