"""paresseg-bench and launch/gpu_check.sh end to end at a tiny scale (what they measure, not how fast)."""

import importlib.util
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


ONE_RUN = pytest.mark.xdist_group("bench_train_infer")  # the module's benchmark run is made by one xdist worker


@pytest.fixture(scope="module")
def train_infer_bench(tmp_path_factory):
    """(table, record) of one paresseg-bench run of a single-branch ResSeg (PA-ResSeg's two compiles of each part
    would add ~25 s; the rows do not depend on the model): train with the baseline convolutions and their op-time
    profiles, and infer, beside the oracle's rows where torch is installed. One process serves the tests of both
    (they compiled the plain 'jax' float32 step twice)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    oracle = ["--compare_torch"] if importlib.util.find_spec("torch") else []
    table = _run([sys.executable, "launch/benchmark.py", *TINY, "--model=resseg", "--parts=train,infer",
                  "--dtypes=float32", "--conv_impls=direct,xla", "--profile_calls=1", *oracle, f"--json={out}"])
    return table, json.loads(out.read_text())


@ONE_RUN
def test_bench_rows_ratios_and_table(train_infer_bench):
    """Every row of train and infer beside the oracle's."""
    pytest.importorskip("torch", reason="--compare_torch needs the test extra's torch")
    table, record = train_infer_bench
    rows = {(r["part"], r["variant"], r.get("mode")): r for r in record["rows"]}
    assert set(rows) == {("train", "jax", None), ("train", "jax-direct", None), ("train", "jax-xla", None),
                         ("train", "torch", None), ("forward", "jax", None), ("forward", "torch", None),
                         ("volume", "jax", "full"), ("volume", "jax", "tile"), ("volume", "jax", "roi"),
                         ("volume", "torch", "full")}
    assert rows["train", "jax", None]["gflop_per_step"] > 0
    # every JAX row has its ratio to the oracle (the ratios' arithmetic: test_ratios_against_torch_by_hand)
    assert all(r["vs_torch"] > 0 for key, r in rows.items() if key[1].startswith("jax"))
    assert not any("vs_torch" in r for key, r in rows.items() if key[1] == "torch") and "vs_torch" in table


def test_ratios_against_torch_by_hand():
    """JAX/PyTorch speed ratios from rows with round numbers (> 1: JAX faster), not from the code's own formula."""
    from paresseg_jax_launch.benchmark import _add_ratios

    rows = [{"part": "train", "variant": "jax", "step_s": 2.0, "samples_per_s": 4.0},
            {"part": "train", "variant": "torch", "step_s": 3.0, "samples_per_s": 2.0 / 3},
            {"part": "volume", "variant": "jax", "mode": "roi", "slices_per_s": 10.0, "volume_s": 6.0},
            {"part": "volume", "variant": "torch", "mode": "full", "slices_per_s": 4.0, "volume_s": 15.0},
            {"part": "study", "variant": "jax", "mode": "whole", "slices": 30, "volume_s": 5.0},
            {"part": "pipeline", "variant": "2 workers", "patches_per_s": 10.0}]
    _add_ratios(rows)
    train, _, roi, torch_volume, study, pipeline = rows
    assert train["vs_torch"] == 1.5 and roi["vs_torch"] == 2.5
    assert study["vs_torch"] == 1.5  # the oracle's 15 s per 60 slices is 7.5 s for the study's 30
    assert pipeline["vs_train_step"] == 2.5 and "vs_torch" not in torch_volume


def test_the_roi_rows_compute_only_the_rois_box(monkeypatch):
    """Mode 'roi' is the cascade's tumor stage, cropped: its forward passes see the liver box, smaller than the
    slice, and the full and tile rows see whole slices (a roi row that timed whole slices once shipped)."""
    import jax
    import numpy as np

    from paresseg_jax import models
    from paresseg_jax.benchmarks import infer
    from paresseg_jax.infer import predict
    from test_train_support import TinySeg

    compiled, shapes = predict._compiled_forward, []

    def spy(module, variables, tta, conv_impl, shape):
        shapes.append(tuple(shape))
        return compiled(module, variables, tta, conv_impl, shape)

    monkeypatch.setattr(predict, "_compiled_forward", spy)
    module = TinySeg(phases=("pv",))
    variables = models.init_variables(module, jax.random.key(0), 16, 16)
    rows = infer.benchmark_infer(module, variables, size=256, slices=2, batch=2, tile=128, stride=128, repeats=1,
                                 warmup=0)
    assert [(r["part"], r.get("mode")) for r in rows] == [("forward", None), ("volume", "full"), ("volume", "tile"),
                                                          ("volume", "roi")]
    sides = {tuple(s[1:3]) for s in shapes}
    box = infer.liver_ellipse(1, 256)[0].nonzero()
    assert (256, 256) in sides and (128, 128) in sides  # whole slices (full), tiles
    cropped = sides - {(256, 256), (128, 128)}
    assert len(cropped) == 1, shapes
    (height, width), = cropped
    assert np.ptp(box[0]) < height < 256 and np.ptp(box[1]) < width < 256  # the ellipse's box, some margin


@pytest.mark.slow  # paresseg-predict four times in subprocesses (~80 s on an idle 2-core CPU); its parts are in the default tier
def test_bench_study_end_to_end_beside_the_oracle(tmp_path):
    pytest.importorskip("torch", reason="--compare_torch needs the test extra's torch")
    out = tmp_path / "bench.json"
    table = _run([sys.executable, "launch/benchmark.py", *TINY, "--parts=infer,study", "--study_slices=6",
                  "--compare_torch", f"--json={out}"])
    rows = {(r["part"], r["variant"], r.get("mode"), r.get("cache")): r for r in json.loads(out.read_text())["rows"]}
    assert {("study", "jax", mode, cache) for mode in ("roi", "whole") for cache in ("cold", "warm")} <= set(rows)
    study = rows["study", "jax", "whole", "cold"]  # paresseg-predict in its own process: seconds and peak memory
    assert study["slices"] == 6 and study["volume_s"] > 0 and 0.1 < study["peak_gb"] < 20
    torch_volume = rows["volume", "torch", "full", None]["volume_s"]
    assert study["vs_torch"] == pytest.approx(torch_volume * 6 / 60 / study["volume_s"])
    # its stages, read back from the report paresseg-predict printed, and its bound (arithmetic: ..._by_hand)
    assert {"reading", "registration", "resampling", "tumor", "compilation", "writing"} <= set(study["stages"])
    assert 0 < sum(study["stages"].values()) < study["volume_s"] and study["bound_s"] > 0 and study["conv_gflops"] > 0
    assert "where the whole study's" in table and "bound:" in table


@ONE_RUN
def test_bench_conv_impl_variants_and_profile(train_infer_bench):
    """The baselines without Winograd / with XLA's convolutions, each with its op-time breakdown
    (a single-branch model: three compiles of PA-ResSeg's step would take ~1.5 min here)."""
    table, record = train_infer_bench
    rows = {r["variant"]: r for r in record["rows"] if r["part"] == "train" and r["variant"] != "torch"}
    assert set(rows) == {"jax", "jax-direct", "jax-xla"}
    assert {r["part"] for r in record["rows"] if r["variant"] in ("jax-direct", "jax-xla")} == {"train"}
    # Same model, same FLOP count whatever computes the convolutions (counted with XLA's own).
    assert rows["jax"]["gflop_per_step"] == rows["jax-direct"]["gflop_per_step"] == rows["jax-xla"]["gflop_per_step"] > 0
    assert "jax-direct" in table and "jax-xla" in table
    # --profile_calls: each JAX train variant says where its op time went; the shares add up.
    for row in rows.values():
        assert sum(entry["share"] for entry in row["profile"]) == pytest.approx(1.0)
        assert any("conv_general_dilated" in entry["what"] for entry in row["profile"])
    assert "where a jax float32 step's op time goes" in table


@pytest.mark.slow  # a subprocess compiling an MSF train step (~1-2 min on 2 cores; the block is tested apart)
def test_bench_times_a_registered_fusion_block_and_plans_its_memory(tmp_path):
    """--fusion puts a block into an MSF model (here the spatial attention); memory_mb is XLA's plan for one
    step, which holds the parameters and Adam's two moments and more (temp_mb: activations, gradients)."""
    import jax
    import numpy as np

    from paresseg_jax import models

    out = tmp_path / "bench.json"
    table = _run([sys.executable, "launch/benchmark.py", *TINY, "--model=msf_resseg", "--fusion=spatial",
                  "--parts=train", "--dtypes=float32", f"--json={out}"])
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["model"]["fusion"] == "spatial" and "memory_mb" in table
    params = models.variable_shapes(models.create("msf_resseg", fusion="spatial", width=4))["params"]
    state_mb = 3 * sum(np.prod(p.shape) * 4 for p in jax.tree.leaves(params)) / 2**20
    assert row["temp_mb"] > 0 and row["memory_mb"] >= state_mb + row["temp_mb"]


@pytest.mark.slow  # eleven compiles in four processes (~6 min on 2 cores)
def test_gpu_check_script_runs_on_cpu_when_allowed(tmp_path):
    pytest.importorskip("torch", reason="COMPARE_TORCH=1 needs the test extra's torch")
    env = {**os.environ, "ALLOW_CPU": "1", "WIDTH": "4", "SIZE": "32", "BIG_BATCH": "4", "SLICES": "2",
           "INFER_BATCH": "2", "SLICE_SIZE": "64", "REPEATS": "1", "PIPELINE_WORKERS": "0", "COMPARE_TORCH": "1",
           "OUT": str(tmp_path), "PYTHON": sys.executable}
    _run(["bash", "launch/gpu_check.sh"], env=env)
    for name, parts in (("train_b4_bfloat16.json", {"train", "pipeline"}), ("train_b4_float32.json", {"train"}),
                        ("train_b8.json", {"train"}), ("infer.json", {"forward", "volume"})):
        record = json.loads((tmp_path / name).read_text())
        assert {r["part"] for r in record["rows"]} == parts
    large = json.loads((tmp_path / "train_b4_bfloat16.json").read_text())["rows"]
    assert all("profile" in r for r in large if r["part"] == "train")  # the op-time breakdown
    variants = {(r["variant"], r.get("dtype")) for r in json.loads((tmp_path / "train_b8.json").read_text())["rows"]}
    assert variants == {("jax", "bfloat16"), ("jax", "float32"), ("torch", "float32")}
    assert json.loads((tmp_path / "infer.json").read_text())["torch"]["device"] == "cpu"  # JAX is on the CPU too
    precision = json.loads((tmp_path / "precision.json").read_text())
    assert set(precision["seconds"]) == {f"{p} {f}" for p in ("highest", "default") for f in ("forward", "gradient")}
    # A CPU computes float32 dots in float32 either way: the same program, the same numbers.
    assert precision["logits_rel_difference"] == precision["grad_rel_difference"] == 0.0
    assert set(json.loads((tmp_path / "parallel.json").read_text())["seconds"]) == {"pmap", "jit"}

    # A failed run (here: a batch that does not divide the volume) is reported; the others still run.
    broken = tmp_path / "broken"
    result = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, capture_output=True, encoding="utf-8",
                            env={**env, "INFER_BATCH": "3", "COMPARE_TORCH": "0", "OUT": str(broken)})
    assert result.returncode == 1 and "FAILED" in result.stderr
    assert sorted(p.name for p in broken.iterdir()) == ["precision.json", "train_b4_bfloat16.json",
                                                         "train_b4_float32.json", "train_b8.json"]

    refused = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, capture_output=True, encoding="utf-8",
                             env={**env, "ALLOW_CPU": "0"})
    assert refused.returncode == 1 and "no GPU" in refused.stderr


def test_gpu_check_runs_only_the_chosen_runs(tmp_path):
    """RUNS picks runs (a short device session can spend its minutes on one); a typo is refused before any run."""
    env = {**os.environ, "ALLOW_CPU": "1", "WIDTH": "4", "SLICES": "2", "INFER_BATCH": "2", "SLICE_SIZE": "64",
           "REPEATS": "1", "RUNS": "infer", "OUT": str(tmp_path / "infer"), "PYTHON": sys.executable,
           "PEAK_TFLOPS": "0"}  # PEAK_TFLOPS set: no Python process is started to look up the device's peak
    out = _run(["bash", "launch/gpu_check.sh"], env=env)
    assert "== inference" in out and "== train step" not in out
    assert [p.name for p in (tmp_path / "infer").iterdir()] == ["infer.json"]
    typo = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, capture_output=True, encoding="utf-8",
                          env={**env, "RUNS": "infer,big_bf61", "OUT": str(tmp_path / "typo")})
    assert typo.returncode == 2 and "unknown run 'big_bf61'" in typo.stderr
    assert not (tmp_path / "typo").exists()

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


def test_xla_flops_counts_a_convolution_by_hand():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from paresseg_jax.benchmarks.timing import xla_flops

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, w = jnp.ones((2, 10, 12, 3), jnp.bfloat16), jnp.ones((3, 3, 3, 5), jnp.bfloat16)
    # a multiply and an add per tap: 2 * N * Ho * Wo * Cout * kh * kw * Cin
    assert xla_flops(conv, x, w) == 2 * 2 * 8 * 10 * 5 * 3 * 3 * 3
    host = {"x": np.ones((2, 10, 12, 3), np.float32), "w": np.ones((3, 3, 3, 5), np.float32)}  # a pytree of numpy
    assert xla_flops(lambda p: conv(p["x"], p["w"]), host) == 2 * 2 * 8 * 10 * 5 * 3 * 3 * 3


def test_study_breakdown_and_flop_bound_by_hand():
    """A study row's breakdown and bound from a hand-made stage record: 600 GFLOP at 300 GFLOP/s is 2 s."""
    from paresseg_jax.benchmarks import study_bound

    row = {"part": "study", "variant": "jax", "mode": "whole", "size": 512, "slices": 60, "volume_s": 10.0}
    times = {"seconds": {"reading": 1.0, "registration": 2.0, "liver": 0.0, "tumor": 4.0, "compilation": 1.5},
             "not_run": ["liver"], "forward_flops": 600e9, "forward_calls": 8}
    row = study_bound.with_bound(row, times, conv_rate=300e9)
    assert row["stages"] == {"reading": 1.0, "registration": 2.0, "tumor": 4.0, "compilation": 1.5}
    assert row["other_s"] == pytest.approx(1.5) and row["bound_s"] == pytest.approx(2.0)
    assert row["vs_bound"] == pytest.approx(5.0) and row["forward_gflop"] == 600 and row["conv_gflops"] == 300
    assert study_bound.breakdown_text(row).splitlines() == [
        "where the whole study's 10.0 s go (60 slices of 512 x 512):",
        "      1.00 s   10.0%  reading",
        "      2.00 s   20.0%  registration",
        "      4.00 s   40.0%  tumor",
        "      1.50 s   15.0%  compilation",
        "      1.50 s   15.0%  other (start-up, imports, models)",
        "  bound: 600.0 GFLOP in 8 forward passes at 300 GFLOP/s (dense convolution, this run) = 2.00 s; "
        "the study takes 5.0x its bound",
    ]


def test_dense_conv_rate_counts_the_convolutions_flops():
    """The measured convolution's FLOPs as XLA counts them, and a positive rate (tiny here)."""
    import jax
    import jax.numpy as jnp

    from paresseg_jax.benchmarks import study_bound
    from paresseg_jax.benchmarks.timing import xla_flops

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    shapes = (1, 16, 16, 8), (3, 3, 8, 4)
    # per axis 14 outputs read 3 taps of the image, the 2 at its borders 2 (the third is padding)
    assert study_bound.conv_flops(*shapes) == 2 * (14 * 3 + 2 * 2) ** 2 * 4 * 8
    assert xla_flops(conv, *(jnp.ones(s) for s in shapes)) == study_bound.conv_flops(*shapes)
    assert study_bound.dense_conv_rate(*shapes, repeats=1) > 0


def test_predict_report_is_read_after_other_output(tmp_path):
    from paresseg_jax.benchmarks.study import printed_report

    printed = tmp_path / "out.txt"
    printed.write_text('a line first\n{"stage_times": {"seconds": {}}}\n')
    assert printed_report(printed) == {"stage_times": {"seconds": {}}}


def test_profile_self_times_labels_and_summary():
    from paresseg_jax.benchmarks import profile

    # a while loop (0-100 ns) holding two ops, then an op after it; nested time is the children's
    events = [("while.1", 0, 100), ("dot.2", 10, 30), ("slice.3", 50, 20), ("copy.4", 120, 5)]
    assert profile._self_times(events) == {"while.1": 50, "dot.2": 30, "slice.3": 20, "copy.4": 5}
    sources = {"while.1": "jit(step)/transpose(jvp(Model))/while", "dot.2": "jit(step)/transpose(jvp())/while/body/dot_general",
               "slice.3": "jit(step)/jvp(Model)/conv/slice"}
    assert profile.describe("dot.2", sources["dot.2"]) == "backward loop dot_general"
    assert profile.describe("slice.3", sources["slice.3"]) == "forward slice"
    assert profile.describe("copy.4", None) == "(XLA) copy"
    rows = profile.summarize({"while.1": 0.5, "dot.2": 0.3, "slice.3": 0.15, "copy.4": 0.05}, sources, top=2)
    assert [(r["what"], r["ops"]) for r in rows] == [("backward while", 1), ("backward loop dot_general", 1),
                                                     ("(2 other kinds)", 2)]
    assert [r["ms"] for r in rows] == pytest.approx([500, 300, 200]) and sum(r["share"] for r in rows) == pytest.approx(1)


def test_profile_op_times_of_a_jitted_function(tmp_path):
    import jax
    import jax.numpy as jnp

    from paresseg_jax.benchmarks import profile

    x = jnp.ones((256, 256))
    compiled = jax.jit(lambda a: jnp.tanh(a @ a)).lower(x).compile()
    times = profile.op_times(lambda: compiled(x).block_until_ready(), calls=2, logdir=str(tmp_path))
    labels = {profile.describe(name, profile.op_sources(compiled).get(name)) for name in times}
    assert all(t >= 0 for t in times.values()) and sum(times.values()) > 0
    assert any("dot_general" in label or "tanh" in label for label in labels), labels
    assert list(tmp_path.rglob("*.xplane.pb"))  # the trace is kept where asked
    with pytest.raises(ValueError, match="calls"):
        profile.op_times(lambda: None, calls=0)


def test_a_failed_profile_keeps_the_timings(monkeypatch):
    import jax

    from paresseg_jax import models
    from paresseg_jax.benchmarks import profile, train
    from test_train_support import TinySeg

    def broken_trace(*args, **kwargs):
        raise RuntimeError("no trace here")

    monkeypatch.setattr(profile, "op_times", broken_trace)
    module = TinySeg()
    variables = models.init_variables(module, jax.random.key(0), 16, 16)
    rows = train.benchmark_train(lambda dtype: TinySeg(dtype=models.DTYPES[dtype]), variables, 2, 16, ["float32"],
                                 repeats=1, warmup=0, profile_calls=1)
    assert len(rows) == 1 and rows[0]["samples_per_s"] > 0
    assert rows[0]["profile_error"] == "RuntimeError: no trace here" and "profile" not in rows[0]


def test_liver_standin_counts_equal_average_pooling():
    """The stand-in's summed-area-table counts, divided in JAX, are nn.avg_pool's window means bit for bit."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from paresseg_jax.benchmarks.liver_standin import window_counts

    rng = np.random.default_rng(3)
    for shape, size in (((2, 40, 57, 1), 41), ((1, 9, 6, 1), 5), ((1, 16, 16, 2), 3)):
        mask = (rng.uniform(size=shape) < 0.7).astype(np.float32)
        counted = jax.jit(lambda m: window_counts(m, size).astype(jnp.float32) / size**2)(mask)
        pooled = jax.jit(lambda m: nn.avg_pool(m, (size, size), strides=(1, 1), padding="SAME"))(mask)
        np.testing.assert_array_equal(counted, pooled)


def test_liver_standin_runs_the_liver_resseg_and_finds_the_phantom_liver_slices():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from paresseg_jax import models
    from paresseg_jax.benchmarks.study import LIVER_MODEL
    from paresseg_jax.benchmarks.train import module_factory
    from paresseg_jax.data import phantom, preprocess
    from paresseg_jax.infer.predict import cost_flops, predict_volume, tumor_probability

    flops = {}
    for name in ("resseg", LIVER_MODEL["name"]):
        module = module_factory({**LIVER_MODEL, "name": name, "width": 4})("float32")
        variables = models.init_variables(module, jax.random.key(0))
        inputs = (jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),)
        flops[name] = cost_flops(tumor_probability.lower(module, variables, inputs).compile())
    assert flops[LIVER_MODEL["name"]] >= flops["resseg"]  # the ResSeg's forward pass is computed, not pruned
    # an untrained ResSeg calls every pixel liver; the stand-in answers with the phantom liver's slices
    case = phantom.make_case(0, "HCC", (12, 512, 512))  # the stand-in is sized for 512 px slices
    pv = preprocess.windowed({"pv": case.phases["pv"]}, preprocess.resolve_config(None))["pv"]
    found = predict_volume(module, variables, {"pv": pv}, batch_size=4) >= 0.5
    liver = np.flatnonzero(case.liver.any(axis=(1, 2)))
    hits = np.flatnonzero(found.any(axis=(1, 2)))
    assert 0 < len(hits) < len(pv) and abs(hits[0] - liver[0]) <= 2 and abs(hits[-1] - liver[-1]) <= 2


def test_liver_bench_settings_and_summary_by_hand():
    from paresseg_jax.benchmarks import liver

    assert liver.parse_settings(["4x1", "1x1", " 2x2"]) == [(1, 1), (4, 1), (2, 2)]
    with pytest.raises(ValueError, match="STEPxSCALE"):
        liver.parse_settings(["4"])
    rows = [{"step": 1, "scale": 1, "case": "a", "dice": 0.9, "gflop": 10.0, "seconds": 4.0},
            {"step": 1, "scale": 1, "case": "b", "dice": 0.8, "gflop": 10.0, "seconds": 4.0},
            {"step": 4, "scale": 1, "case": "a", "dice": 0.9, "gflop": 6.0, "seconds": 3.0},
            {"step": 4, "scale": 1, "case": "b", "dice": 0.7, "gflop": 4.0, "seconds": 1.0}]
    full, cheap = liver.summary(rows)
    assert (full["dice"], full["flop_fraction"], full["time_fraction"]) == (pytest.approx(0.85), 1.0, 1.0)
    assert cheap["dice_change"] == pytest.approx(-0.05) and cheap["min_dice"] == 0.7
    assert (cheap["flop_fraction"], cheap["time_fraction"]) == (0.5, 0.5)


def test_bench_parallel_times_both_modes_of_the_training_step_on_every_device(tmp_path):
    """paresseg-bench parallel: pmap and jit sharding each wrap the library's step on all (here 2 simulated)
    devices; the ratio is of the two medians it reports; a batch the devices do not divide is refused."""
    from test_train_support import xla_flags_with_devices

    env = {**os.environ, "XLA_FLAGS": xla_flags_with_devices(2), "PYTHONPATH": str(REPO / "tests")}
    command = [sys.executable, "launch/benchmark.py", "parallel", "--model=test_train_support:TinySeg", "--width=4",
               "--size=16", "--repeats=2"]
    table = _run([*command, "--batch=4", f"--json={tmp_path / 'parallel.json'}"], env=env)
    record = json.loads((tmp_path / "parallel.json").read_text())
    assert record["devices"] == 2 and set(record["seconds"]) == {"pmap", "jit"}
    seconds = {mode: record["seconds"][mode]["median"] for mode in ("pmap", "jit")}
    assert all(s > 0 for s in seconds.values())
    assert record["jit_over_pmap"] == pytest.approx(seconds["jit"] / seconds["pmap"])
    assert f"jit / pmap: {record['jit_over_pmap']:.3f}" in table
    refused = subprocess.run([*command, "--batch=3"], cwd=REPO, env=env, capture_output=True, encoding="utf-8")
    assert refused.returncode != 0 and "not divisible by the 2 devices" in refused.stderr
