"""paresseg-bench: speed of the train step, inference and input pipeline, as a table and JSON.

    paresseg-bench --model=paresseg --batch=2 --size=224 --slices=4 --compare_torch --json=bench.json
    paresseg-bench --parts=train --dtypes=float32 --batch=2 --conv_impls=direct,xla --compare_torch   # CPU convs
    paresseg-bench --parts=train --dtypes=float32,bfloat16 --batch=256 --peak_tflops=989   # one GPU
    paresseg-bench --parts=infer,study --slices=2 --infer_batch=1 --compare_torch   # a study end to end
    paresseg-bench pipeline --workers=0,2    # paired patches/s (paresseg_jax.benchmarks.pipeline)
    paresseg-bench data                      # phantom, NIfTI and preprocessing (paresseg_jax.benchmarks.data)
    paresseg-bench registration              # ART-to-PV error in mm per registration region (phantom)
    paresseg-bench extent --run=runs/demo/paresseg --liver_workdir=runs/demo/liver   # whole slices vs ROI crop
    paresseg-bench liver --run=runs/demo/paresseg --liver_workdir=runs/demo/liver   # liver stage: full vs cheaper
    paresseg-bench precision --width=64 --size=224   # attention matmuls at HIGHEST vs default (TF32 on GPUs)

Timing: compile time reported apart, warm-up calls excluded, variants run
interleaved in rounds, medians. With --compare_torch the PyTorch oracle
(paresseg_jax.interop.torch_reference) runs the same weights and inputs in the same process
and the table gives JAX/PyTorch speed ratios.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

from paresseg_jax import cli, flag_checks
from paresseg_jax.atomic import write_text

SUBCOMMANDS = {"pipeline": "paresseg_jax.benchmarks.pipeline", "data": "paresseg_jax.benchmarks.data",
               "registration": "paresseg_jax.benchmarks.registration",
               "extent": "paresseg_jax.benchmarks.extent", "precision": "paresseg_jax.benchmarks.precision",
               "liver": "paresseg_jax.benchmarks.liver", "parallel": "paresseg_jax.benchmarks.parallel"}
PARTS = ("train", "infer", "pipeline", "study")
DEFAULT_PARTS = ("train", "infer", "pipeline")
BASELINE_CONV_IMPLS = ("direct", "xla")  # ops.conv_impl settings other than the default
FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("model", "paresseg", "model: a registered name (paresseg_jax.models.MODELS) or package.module:Class")
    flags.DEFINE_integer("width", 64, "model width (the reference's nc)")
    flags.DEFINE_enum("attention", "reference", ["reference", "paper"], "attention semantics")
    flags.DEFINE_string("fusion", None, "fusion block of an MSF model: a registered name (e.g. 'spatial') or "
                        "package.module:Class; default: the model's own")
    flags.DEFINE_integer("batch", 8, "train batch size (the paper's is 8)")
    flags.DEFINE_integer("size", 224, "train patch size")
    flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes of the JAX train step")
    flags.DEFINE_list("parts", list(DEFAULT_PARTS), f"what to measure, among {PARTS} (study: paresseg-predict on a "
                      "phantom study of --slice_size and --study_slices, wall time and peak memory, the time of each "
                      "stage and the FLOP bound)")
    flags.DEFINE_integer("repeats", 5, "timed calls per variant (median reported)")
    flags.DEFINE_integer("warmup", 1, "untimed calls per variant after compilation")
    flags.DEFINE_integer("slices", 60, "slices of the inference volume (times are scaled to 60 slices)")
    flags.DEFINE_integer("slice_size", 512, "in-plane size of the inference volume")
    flags.DEFINE_integer("study_slices", 60, "slices of the study of --parts=study")
    flags.DEFINE_list("study_variants", ["roi", "whole"], "studies of --parts=study: roi (liver mask, ROI crop), whole "
                      "(liver mask, whole slices), liver (a liver model, the liver stage's defaults), liver-full "
                      "(a liver model on every whole slice)")
    flags.DEFINE_integer("infer_batch", 4, "slices or tiles per inference batch (must divide --slices)")
    flags.DEFINE_integer("tile", 224, "overlap-tile size")
    flags.DEFINE_integer("stride", 112, "overlap-tile stride")
    flags.DEFINE_list("pipeline_workers", ["0", "2"], "Grain worker counts for the pipeline part")
    flags.DEFINE_integer("pipeline_batches", 20, "timed pipeline batches per worker count")
    flags.DEFINE_list("conv_impls", [], "also time the train step with these ops.conv_impl settings (variants "
                      "jax-direct: no Winograd; jax-xla: XLA's own convolutions and gradients)")
    flags.DEFINE_bool("compare_torch", False, "also run the PyTorch oracle (needs the torch extra)")
    flags.DEFINE_integer("profile_calls", 0, "after timing, trace this many steps of each JAX train variant with "
                         "jax.profiler and print where the time goes, by operation (0: off)")
    flags.DEFINE_string("profile_dir", None, "keep the --profile_calls traces here (for TensorBoard/XProf)")
    flags.DEFINE_float("peak_tflops", None, "the device's peak TFLOP/s, to report the fraction achieved")
    flags.DEFINE_string("json", None, "write all results here")


def _torch_oracle(name: str, width: int, attention: str):
    """(torch model, Flax module spec, Flax variables) with the same random weights."""
    try:
        from paresseg_jax.interop.torch_reference import harness
    except ImportError as error:
        raise app.UsageError(f"--compare_torch needs torch: pip install 'paresseg_jax[torch]' ({error})")
    from paresseg_jax.interop import torch as interop

    archs = {ours: ref for ref, ours in interop.ARCHITECTURES.items()}
    if name not in archs:
        raise app.UsageError(f"--compare_torch: the oracle has only {sorted(archs)}, not --model={name}")
    from paresseg_jax.benchmarks import torch_device

    model = harness.reference_model(archs[name], width, attention, seed=0)
    state = model.state_dict()
    spec, variables = interop.spec_from_state_dict(state), interop.from_torch_state_dict(state)
    return model.to(torch_device.device()), spec, variables


def _oracle_record(torch_model) -> dict | None:
    """Torch version and the oracle's device (CUDA float32 convolutions may use TF32, torch's default)."""
    if torch_model is None:
        return None
    import torch

    from paresseg_jax.benchmarks import torch_device

    target = torch_device.of(torch_model)
    return {"version": torch.__version__, "device": target,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if target == "cuda" else None}


def _pipeline(batch: int, size: int) -> list[dict]:
    """Runs the pipeline benchmark in its own process (its workers must not share our timing)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pipeline.json"
        cmd = [sys.executable, "-m", "paresseg_jax.benchmarks.pipeline", f"--json={out}", f"--batch={batch}",
               f"--crop={size}", f"--workers={','.join(FLAGS.pipeline_workers)}",
               f"--batches={FLAGS.pipeline_batches}"]
        # The pipeline runs on the host: its process must not claim the accelerator this one holds
        # (JAX would preallocate most of a GPU's memory a second time).
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        record = json.loads(out.read_text(encoding="utf-8"))
    return [{"part": "pipeline", "variant": f"{w} workers", "batch": batch, "size": size, "patches_per_s": rate}
            for w, rate in record["patches_per_second"].items()]


def _add_ratios(rows: list[dict]) -> None:
    """JAX/torch speed ratio on each JAX row that has a torch row of the same part (torch: float32, whole slices),
    and on pipeline rows the ratio of patches/s to the fastest JAX train step's samples/s."""
    from paresseg_jax.benchmarks.infer import VOLUME_SLICES

    jax_train = [r["samples_per_s"] for r in rows if r["part"] == "train" and r.get("variant", "").startswith("jax")]
    for row in rows:
        if row["part"] == "pipeline" and jax_train:
            # > 1: the loader delivers more patches than the fastest JAX train step consumes.
            row["vs_train_step"] = row["patches_per_s"] / max(jax_train)
        if not row.get("variant", "").startswith("jax"):
            continue
        if row["part"] == "study":  # a whole study beside the oracle's whole-slice time for as many slices
            for other in rows:
                if other["part"] == "volume" and other.get("variant") == "torch":
                    row["vs_torch"] = other["volume_s"] * row["slices"] / VOLUME_SLICES / row["volume_s"]
            continue
        key = "step_s" if row["part"] == "train" else "slices_per_s"
        for other in rows:
            if other.get("variant") == "torch" and other["part"] == row["part"]:  # torch: whole slices only
                row["vs_torch"] = (other[key] / row[key]) if key == "step_s" else (row[key] / other[key])


def _print_profiles(rows: list[dict]) -> None:
    """Per profiled train variant: milliseconds of XLA op time per step by kind of operation."""
    for row in rows:
        if "profile_error" in row:
            print(f"\nno profile of the {row['variant']} {row['dtype']} step: {row['profile_error']}")
        if "profile" not in row:
            continue
        print(f"\nwhere a {row['variant']} {row['dtype']} step's op time goes (summed over threads on a CPU):")
        for entry in row["profile"]:
            print(f"  {entry['ms']:9.1f} ms  {entry['share']:6.1%}  {entry['ops']:4d} ops  {entry['what']}")


def _print_breakdowns(rows: list[dict]) -> None:
    """Per study row: where its seconds went, stage by stage, and its FLOP bound."""
    from paresseg_jax.benchmarks.study_bound import breakdown_text

    for row in rows:
        if row["part"] == "study" and "stages" in row:
            print("\n" + breakdown_text(row))


def _print_table(rows: list[dict], peak_tflops) -> None:
    columns = [("part", "{}"), ("variant", "{}"), ("mode", "{}"), ("cache", "{}"), ("dtype", "{}"), ("batch", "{}"), ("size", "{}"),
               ("samples_per_s", "{:.2f}"), ("slices_per_s", "{:.2f}"), ("volume_s", "{:.1f}"),
               ("patches_per_s", "{:.1f}"), ("peak_gb", "{:.2f}"), ("gflops", "{:.1f}"), ("peak_fraction", "{:.1%}"),
               ("vs_torch", "{:.2f}x"), ("bound_s", "{:.2f}"), ("vs_bound", "{:.1f}x"), ("vs_train_step", "{:.1f}x"),
               ("compile_s", "{:.1f}"), ("temp_mb", "{:.0f}"), ("memory_mb", "{:.0f}")]
    for row in rows:
        if peak_tflops and row.get("gflops"):
            row["peak_fraction"] = row["gflops"] / 1e3 / peak_tflops
    used = [(c, f) for c, f in columns if any(row.get(c) is not None for row in rows)]
    cells = [[c for c, _ in used]] + [["" if row.get(c) is None else f.format(row[c]) for c, f in used] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(used))]
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


# The numeric flags' ranges, checked before anything is built (flag_checks).
RANGES = {"width": dict(low=1), "batch": dict(low=1), "size": dict(low=32), "repeats": dict(low=1),
          "warmup": dict(low=0), "slices": dict(low=1), "slice_size": dict(low=32), "study_slices": dict(low=1),
          "infer_batch": dict(low=1), "tile": dict(low=16), "stride": dict(low=1), "pipeline_batches": dict(low=1),
          "profile_calls": dict(low=0), "peak_tflops": dict(low=0.0, low_open=True)}


def _check_flags(argv) -> None:
    """Every flag before anything is built: one line for a mistake."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; subcommands are {sorted(SUBCOMMANDS)}, first")
    unknown = sorted(set(FLAGS.parts) - set(PARTS))
    if unknown:
        raise app.UsageError(f"--parts: unknown {unknown}; choose among {PARTS}")
    unknown = sorted(set(FLAGS.conv_impls) - set(BASELINE_CONV_IMPLS))
    if unknown:
        raise app.UsageError(f"--conv_impls: unknown {unknown}; choose among {BASELINE_CONV_IMPLS}")
    from paresseg_jax.benchmarks.study import VARIANTS

    unknown = sorted(set(FLAGS.study_variants) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"--study_variants: unknown {unknown}; choose among {sorted(VARIANTS)}")
    if FLAGS.fusion and FLAGS.compare_torch:
        raise app.UsageError("--compare_torch runs the reference's own models; leave --fusion unset")
    flag_checks.all_in_range({name: getattr(FLAGS, name) for name in RANGES}, RANGES)
    flag_checks.numbers("pipeline_workers", FLAGS.pipeline_workers, low=0)
    if "infer" in FLAGS.parts and FLAGS.slices % FLAGS.infer_batch:
        raise app.UsageError(f"--slices={FLAGS.slices} must be a multiple of --infer_batch={FLAGS.infer_batch}: "
                             "a padded last batch would count in the per-volume time")


def main(argv):
    _check_flags(argv)
    import jax

    from paresseg_jax import models
    from paresseg_jax.benchmarks import infer, train

    if FLAGS.compare_torch:
        torch_model, spec, variables = _torch_oracle(FLAGS.model, FLAGS.width, FLAGS.attention)
    else:
        torch_model = None
        spec = {"name": FLAGS.model, "width": FLAGS.width, "attention": FLAGS.attention}
        if FLAGS.fusion:
            spec["fusion"] = FLAGS.fusion
        variables = models.init_variables(train.module_factory(spec)("float32"), jax.random.key(0))
    factory = train.module_factory(spec)
    rows = []
    if "train" in FLAGS.parts:
        rows += train.benchmark_train(factory, variables, FLAGS.batch, FLAGS.size, FLAGS.dtypes, FLAGS.repeats,
                                      FLAGS.warmup, torch_model, FLAGS.conv_impls, FLAGS.profile_calls,
                                      FLAGS.profile_dir)
    if "infer" in FLAGS.parts:
        rows += infer.benchmark_infer(factory("float32"), variables, FLAGS.slice_size, FLAGS.slices, FLAGS.infer_batch,
                                      FLAGS.tile, FLAGS.stride, FLAGS.repeats, FLAGS.warmup, torch_model)
    if "pipeline" in FLAGS.parts:
        rows += _pipeline(FLAGS.batch, FLAGS.size)
    if "study" in FLAGS.parts:
        from paresseg_jax.benchmarks import study

        rows += study.benchmark_study(spec, variables, FLAGS.slice_size, FLAGS.study_slices,
                                      tuple(FLAGS.study_variants))
    _add_ratios(rows)
    device = jax.devices()[0]
    tunables = os.environ.get("GLIBC_TUNABLES", "")  # set by paresseg_jax.huge_pages unless opted out
    oracle = _oracle_record(torch_model)
    print(f"{FLAGS.model} width {FLAGS.width} on {device.platform} ({device.device_kind}), "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, GLIBC_TUNABLES={tunables!r}"
          + (f", torch {oracle['version']} on {oracle['device']}" if oracle else ""))
    _print_table(rows, FLAGS.peak_tflops)
    _print_breakdowns(rows)
    _print_profiles(rows)
    if FLAGS.json:
        record = {"model": spec, "device": {"platform": device.platform, "kind": device.device_kind,
                                            "count": jax.device_count(), "cpus": os.cpu_count(),
                                            "host": platform.node()},
                  "jax": jax.__version__, "torch": oracle, "glibc_tunables": tunables, "flags": {f: FLAGS[f].value for f in (
                      "batch", "size", "dtypes", "repeats", "warmup", "slices", "slice_size", "infer_batch", "tile",
                      "stride", "conv_impls", "compare_torch", "peak_tflops", "profile_calls", "study_slices",
                      "study_variants")},
                  "rows": rows}
        write_text(FLAGS.json, json.dumps(record, indent=1))


def run():
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        cli.run_app(f"{SUBCOMMANDS[sys.argv[1]]}:main", cache_compilations=False, argv=[sys.argv[0]] + sys.argv[2:])
    else:
        _define_flags()
        cli.run_app(main, cache_compilations=False)


if __name__ == "__main__":
    run()
