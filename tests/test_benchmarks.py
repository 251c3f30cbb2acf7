"""paresseg-bench and launch/gpu_check.sh end to end at a tiny scale (what they measure, not how fast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model=paresseg", "--width=4", "--size=32", "--batch=2", "--repeats=1", "--warmup=0", "--slices=2",
        "--slice_size=64", "--infer_batch=2", "--tile=32", "--stride=16"]


def _run(args, **kwargs):
    result = subprocess.run(args, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_rows_ratios_and_table(tmp_path):
    pytest.importorskip("torch", reason="--compare_torch needs the test extra's torch")
    out = tmp_path / "bench.json"
    table = _run([sys.executable, "launch/benchmark.py", *TINY, "--parts=train,infer", "--dtypes=float32",
                  "--xla_conv", "--compare_torch", f"--json={out}"])
    record = json.loads(out.read_text())
    rows = {(r["part"], r["variant"], r.get("mode")): r for r in record["rows"]}
    assert set(rows) == {("train", "jax", None), ("train", "jax-xla-conv", None), ("train", "torch", None),
                         ("forward", "jax", None), ("forward", "torch", None), ("volume", "jax", "full"),
                         ("volume", "jax", "tile"), ("volume", "jax", "roi"), ("volume", "torch", "full")}
    train, baseline, torch_row = rows["train", "jax", None], rows["train", "jax-xla-conv", None], rows["train", "torch", None]
    # Same model, same FLOP count whatever computes the weight gradient (counted with XLA's convolutions).
    assert train["gflop_per_step"] == baseline["gflop_per_step"] > 0
    assert train["vs_torch"] == pytest.approx(torch_row["step_s"] / train["step_s"])
    assert rows["volume", "jax", "roi"]["vs_torch"] == pytest.approx(
        rows["volume", "jax", "roi"]["slices_per_s"] / rows["volume", "torch", "full"]["slices_per_s"])
    assert "vs_torch" not in torch_row
    assert "jax-xla-conv" in table and "vs_torch" in table


@pytest.mark.slow  # six compiles in three processes (~2 min on 2 cores)
def test_gpu_check_script_runs_on_cpu_when_allowed(tmp_path):
    env = {**os.environ, "ALLOW_CPU": "1", "WIDTH": "4", "SIZE": "32", "BIG_BATCH": "4", "SLICES": "2",
           "INFER_BATCH": "2", "SLICE_SIZE": "64", "REPEATS": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    _run(["bash", "launch/gpu_check.sh"], env=env)
    for name, parts in (("train_b8.json", {"train"}), ("train_b4.json", {"train"}), ("infer.json", {"forward", "volume"})):
        record = json.loads((tmp_path / name).read_text())
        assert {r["part"] for r in record["rows"]} == parts
    refused = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, capture_output=True, encoding="utf-8",
                             env={**env, "ALLOW_CPU": "0"})
    assert refused.returncode == 1 and "no GPU" in refused.stderr


def test_time_interleaved_rounds_rewarm_each_variant():
    from paresseg_jax.benchmarks.timing import time_interleaved

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    timed = time_interleaved(fns, repeats=3, warmup=2, settle_s=0.0, rewarm=1)
    # two warm-up calls each, then per round an untimed and a timed call of a, then of b
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3
    assert all(len(t["times"]) == 3 and t["min"] <= t["median"] for t in timed.values())
    calls.clear()
    time_interleaved({"a": fns["a"]}, repeats=3, warmup=1, settle_s=0.0)
    assert calls == ["a"] * 4  # a lone variant has nothing to re-warm from
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0)
