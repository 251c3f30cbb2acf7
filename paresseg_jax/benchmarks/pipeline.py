"""Paired patches per second of the Grain training pipeline, by worker count.

``python -m paresseg_jax.benchmarks.pipeline [--workers=0,1,2] [--json=out.json]``
writes a synthetic cache (a few 512x512x40 cases, PV and ART), then times
batches of 224x224 paired 2.5D patches after a warm-up. The train step's
consumption is measured elsewhere; the ratio of the two says which one waits.
"""

import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from paresseg_jax import config_defaults
from paresseg_jax.atomic import write_text
from paresseg_jax.data import cache, pipeline

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_integer("cases", 3, "synthetic cases in the cache")
    flags.DEFINE_integer("size", 512, "in-plane size of each case")
    flags.DEFINE_integer("depth", 40, "slices per case")
    flags.DEFINE_integer("crop", 224, "training patch size")
    flags.DEFINE_integer("batch", 8, "global batch size (one process)")
    flags.DEFINE_integer("batches", 40, "timed batches per worker count")
    flags.DEFINE_integer("warmup", 5, "untimed batches first (worker start-up)")
    flags.DEFINE_list("workers", ["0", "1", "2"], "worker counts to time")
    flags.DEFINE_string("cache_dir", None, "reuse/fill this cache folder instead of a temporary one")
    flags.DEFINE_string("json", None, "also write the results here")


def write_synthetic_cache(cache_dir, cases, size, depth, seed=0):
    """Random images with a liver box in the middle third; enough realism for I/O timing."""
    rng = np.random.default_rng(seed)
    shape = (depth, size, size)
    liver = np.zeros(shape, np.uint8)
    liver[depth // 8 : depth - depth // 8, size // 4 : 3 * size // 4, size // 5 : 3 * size // 4] = 1
    tumor = np.zeros(shape, np.uint8)
    tumor[depth // 3 : depth // 2, size // 3 : size // 3 + 40, size // 3 : size // 3 + 40] = 1
    for i in range(cases):
        case_id = f"bench{i:03d}"
        if not cache.is_cached(cache_dir, case_id):
            images = {p: rng.random(shape, np.float32) for p in ("pv", "art")}
            weight = rng.random(shape, np.float32)
            cache.store_case(cache_dir, case_id, images, liver, tumor, liver, weight, {"tumor_type": "HCC"})
    return cache.open_cohort(cache_dir, [f"bench{i:03d}" for i in range(cases)])


def patches_per_second(config, cases, workers, batches, warmup) -> tuple[float, dict[str, float]]:
    """Patches per second after ``warmup`` batches, and the bytes one sample carries per array of a batch
    (what a host-to-device copy moves: batches travel as the pipeline makes them)."""
    loader = pipeline.make_train_loader(config, cases, seed=0, worker_count=workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["pv"].shape == (config.train.batch_size, config.data.crop_size, config.data.crop_size, 3)
    sample_bytes = {name: np.asarray(array).nbytes / config.train.batch_size for name, array in batch.items()}
    return batches * config.train.batch_size / elapsed, sample_bytes


def main(argv):
    del argv
    config = config_defaults.get_config()
    config.data.crop_size = FLAGS.crop
    config.train.batch_size = FLAGS.batch
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = FLAGS.cache_dir or tmp
        os.makedirs(cache_dir, exist_ok=True)
        cases = write_synthetic_cache(cache_dir, FLAGS.cases, FLAGS.size, FLAGS.depth)
        results, sample_bytes = {}, {}
        for workers in map(int, FLAGS.workers):
            results[workers], sample_bytes = patches_per_second(config, cases, workers, FLAGS.batches, FLAGS.warmup)
    print(f"paired {FLAGS.crop}x{FLAGS.crop} patches ({'+'.join(config.model.phases)}, batch {FLAGS.batch}), "
          f"{os.cpu_count()} CPUs, {sum(sample_bytes.values()) / 1e6:.2f} MB per sample ("
          + ", ".join(f"{name} {size / 1e3:.0f} kB" for name, size in sample_bytes.items()) + ")")
    print("workers  patches/s  per worker")
    for workers, rate in results.items():
        print(f"{workers:>7}  {rate:9.1f}  {rate / max(workers, 1):10.1f}")
    if FLAGS.json:
        record = {
            "cases": FLAGS.cases, "size": FLAGS.size, "depth": FLAGS.depth, "crop": FLAGS.crop,
            "batch": FLAGS.batch, "batches": FLAGS.batches, "cpus": os.cpu_count(),
            "patches_per_second": {str(w): r for w, r in results.items()}, "bytes_per_sample": sample_bytes,
        }
        write_text(FLAGS.json, json.dumps(record, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
