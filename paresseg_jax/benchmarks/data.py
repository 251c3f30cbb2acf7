"""Seconds per case of phantom generation, NIfTI I/O and preprocessing (with registration Dice).

``python -m paresseg_jax.benchmarks.data [--cases=2] [--size=512] [--slices=40] [--json=out.json]``
generates phantom cases (PV and ART), writes and reads them as NIfTI, runs
the default preprocessing (ART-to-PV registration, window, ROI, BE weights)
and writes the cache. The phantom knows where ART shows the liver, so the
table also gives the ART-liver vs PV-liver Dice before and after registration.
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from paresseg_jax.atomic import write_text
from paresseg_jax.data import cache, phantom, preprocess
from paresseg_jax.data.case import read_case, write_case
from paresseg_jax.data.registration import apply_transform, register_phase
from paresseg_jax.metrics import dice

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_integer("cases", 2, "phantom cases to time (tumor types and scanners alternate)")
    flags.DEFINE_integer("size", 512, "in-plane size of each case")
    flags.DEFINE_integer("slices", 40, "slices per case")
    flags.DEFINE_integer("seed", 0, "first case seed")
    flags.DEFINE_string("json", None, "also write the results here")


def _time_case(index: int, workdir: Path) -> dict:
    seed = FLAGS.seed + index
    tumor_type = phantom.TUMOR_TYPES[index % len(phantom.TUMOR_TYPES)]
    scanner = sorted(phantom.SCANNERS)[index % len(phantom.SCANNERS)]
    start, cpu = time.perf_counter(), time.process_time()
    case, masks = phantom.make_case_with_phase_masks(seed, tumor_type, (FLAGS.slices, FLAGS.size, FLAGS.size), scanner=scanner)
    generate, generate_cpu = time.perf_counter() - start, time.process_time() - cpu

    start = time.perf_counter()
    write_case(case, workdir / "cohort" / case.case_id)
    write = time.perf_counter() - start
    start = time.perf_counter()
    case = read_case(workdir / "cohort" / case.case_id)
    read = time.perf_counter() - start

    config = preprocess.default_preprocess_config()
    start = time.perf_counter()
    region = preprocess.liver_roi(case.liver)
    transform, _ = register_phase(case.phases["pv"], case.phases["art"], case, config["registration"], region)
    register = time.perf_counter() - start
    moved_liver = apply_transform(masks["art"]["liver"].astype(np.float32), case, transform) > 0.5
    start, cpu = time.perf_counter(), time.process_time()
    arrays = preprocess.preprocess_case(case, config)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    cache.store_case(cache.cache_dir_for(workdir / "cache", config), case.case_id, **arrays)
    cache_write = time.perf_counter() - start
    return {
        "case": case.case_id,
        "tumor_type": tumor_type,
        "scanner": scanner,
        "generate_s": generate,
        "generate_cpu_s": generate_cpu,
        "nifti_write_s": write,
        "nifti_read_s": read,
        "register_s": register,
        "preprocess_s": total,
        "preprocess_cpu_s": total_cpu,
        "cache_write_s": cache_write,
        "dice_before": dice(masks["art"]["liver"], case.liver),
        "dice_after": dice(moved_liver, case.liver),
    }


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_time_case(i, Path(tmp)) for i in range(FLAGS.cases)]
    keys = ["generate_s", "generate_cpu_s", "nifti_write_s", "nifti_read_s", "register_s", "preprocess_s", "preprocess_cpu_s",
            "cache_write_s", "dice_before", "dice_after"]
    print(f"{FLAGS.slices} x {FLAGS.size} x {FLAGS.size} phantom cases (PV + ART), seconds per case:")
    print(f"{'case':<14}{'type':<6}{'scanner':<13}" + "".join(f"{k:>17}" for k in keys))
    for row in rows:
        print(f"{row['case']:<14}{row['tumor_type']:<6}{row['scanner']:<13}" + "".join(f"{row[k]:>17.3f}" for k in keys))
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(f"{'mean':<33}" + "".join(f"{means[k]:>17.3f}" for k in keys))
    print("preprocess_s = registration + window + ROI + BE weights; *_cpu_s = CPU seconds of all threads (wall time on a busy machine overstates)")
    if FLAGS.json:
        shape = [FLAGS.slices, FLAGS.size, FLAGS.size]
        write_text(FLAGS.json, json.dumps({"shape": shape, "cases": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
