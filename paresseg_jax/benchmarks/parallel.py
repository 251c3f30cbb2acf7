"""pmap against jit sharding: the training loop's own step in each ``config.train.parallel`` mode, side by side.

Each mode wraps the library's step (``train.step.make_train_step``, cross-entropy,
Adam) with ``train.parallel.DataParallel`` exactly as ``paresseg-train`` does, on
every device of this host, and the same global batch goes to both. The modes are
timed interleaved (``timing.time_interleaved``), so the ratio is from one run.
Simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
share the host's cores: there the ratio shows each mode's overhead, not scaling.
"""

from __future__ import annotations

import json

import jax
from absl import app, flags

from paresseg_jax import atomic, losses, models
from paresseg_jax.benchmarks.timing import time_interleaved
from paresseg_jax.benchmarks.train import TRAIN_CONFIG, random_batch
from paresseg_jax.train.parallel import MODES, DataParallel
from paresseg_jax.train.state import create_train_state, make_optimizer
from paresseg_jax.train.step import make_train_step

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_string("model", "paresseg", "a registered model name")
    flags.DEFINE_integer("width", 16, "model width (the reference's nc is 64)")
    flags.DEFINE_integer("size", 64, "training patch size")
    flags.DEFINE_integer("batch", 8, "global batch size (a multiple of the device count)")
    flags.DEFINE_integer("repeats", 5, "timed steps per mode (median reported)")
    flags.DEFINE_string("json", None, "also write the results here")


def mode_step(mode: str, model: str, width: int, batch: dict):
    """A blocking call running one training step in ``mode`` on every device, its state carried over."""
    parallel = DataParallel(mode)
    parallel.check_batch_size(len(next(iter(batch.values()))))
    module = models.create(model, width=width, bn_axis_name=parallel.bn_axis_name)
    tx = make_optimizer(TRAIN_CONFIG, 1)
    step = parallel.wrap_train_step(make_train_step(module, tx, losses.get_loss("ce"),
                                                    lambda _: TRAIN_CONFIG["learning_rate"], parallel.bn_axis_name))
    holder = {"state": parallel.put_state(create_train_state(models.init_variables(module, jax.random.key(0)), tx, 0))}
    placed = parallel.put_batch(batch)

    def call():
        holder["state"], metrics = step(holder["state"], placed)
        jax.block_until_ready(metrics)

    return call


def measure(model: str, width: int, size: int, batch_size: int, repeats: int) -> dict:
    """Seconds per step of each mode (median, min) and jit's time as a fraction of pmap's."""
    spec = models.create(model, width=width)
    batch = random_batch(spec.phases, batch_size, size, spec.in_channels)
    steps = {mode: mode_step(mode, model, width, batch) for mode in MODES}
    times = time_interleaved(steps, repeats)
    return {"devices": jax.device_count(), "platform": jax.default_backend(), "model": model, "width": width,
            "size": size, "batch": batch_size, "seconds": {m: {k: times[m][k] for k in ("median", "min")} for m in MODES},
            "jit_over_pmap": times["jit"]["median"] / times["pmap"]["median"]}


def main(argv):
    del argv
    result = measure(FLAGS.model, FLAGS.width, FLAGS.size, FLAGS.batch, FLAGS.repeats)
    print(f"{result['model']} width {result['width']}, {result['size']} px, global batch {result['batch']} on "
          f"{result['devices']} {result['platform']} device(s), seconds per step (median of {FLAGS.repeats}):")
    for mode in MODES:
        print(f"  {mode:5s} {result['seconds'][mode]['median']:8.3f}")
    print(f"  jit / pmap: {result['jit_over_pmap']:.3f}")
    if FLAGS.json:
        atomic.write_text(FLAGS.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
