"""What ``precise_attention`` costs and changes: PA-ResSeg's forward pass and gradient in float32 with the
attention matmuls at ``Precision.HIGHEST`` and at the backend's default (TF32 on Ampere and newer GPUs).

``paresseg-bench precision [--width=64] [--size=224] [--batch=2] [--gamma=1] [--json=out.json]``
sets every attention ``gamma`` to ``--gamma`` (at init they are 0 and the
attention does not reach the output), then prints the relative difference
between the two settings' eval-mode logits and train-mode cross-entropy
gradients, and the median seconds per call of each. On a CPU both settings
compile to the same program (float32 dots are float32 there); on a GPU the
difference is TF32's.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from paresseg_jax import atomic, models
from paresseg_jax.benchmarks.timing import time_interleaved

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_integer("width", 64, "model width (the reference's nc)")
    flags.DEFINE_integer("size", 224, "input height and width")
    flags.DEFINE_integer("batch", 2, "batch size")
    flags.DEFINE_float("gamma", 1.0, "value given to every attention gamma")
    flags.DEFINE_integer("repeats", 5, "timed calls per variant")
    flags.DEFINE_string("json", None, "also write the results here")


def _with_gammas(variables, gamma: float):
    def set_gamma(path, leaf):
        return jnp.full_like(leaf, gamma) if jax.tree_util.keystr(path).endswith("['gamma']") else leaf

    return jax.tree_util.tree_map_with_path(set_gamma, variables)


def _relative(a, b) -> float:
    """||a - b|| / ||b|| over all leaves."""
    a, b = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)], [np.asarray(x, np.float64) for x in jax.tree.leaves(b)]
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b))) / np.sqrt(sum(np.sum(y**2) for y in b)))


def compare(width: int, size: int, batch: int, gamma: float, repeats: int) -> dict:
    """Logits and gradient of both settings (relative difference, default vs HIGHEST) and seconds per call."""
    rng = np.random.default_rng(0)
    base = models.create("paresseg", width=width)
    variables = _with_gammas(models.init_variables(base, jax.random.key(0)), gamma)
    xs = [jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32) for _ in base.phases]
    labels = jnp.asarray(rng.random((batch, size, size)) > 0.8, jnp.int32)
    outputs, calls = {}, {}
    for name, precise in (("highest", True), ("default", False)):
        module = models.create("paresseg", width=width, precise_attention=precise)

        def loss(params, variables, xs, labels, module=module):
            logits, _ = module.apply({**variables, "params": params}, *xs, train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], -1))

        # Weights and inputs are arguments: closed over, XLA would constant-fold them for minutes.
        forward = jax.jit(lambda variables, xs, module=module: module.apply(variables, *xs, train=False))
        gradient = jax.jit(lambda variables, xs, labels, loss=loss: jax.grad(loss)(variables["params"], variables, xs, labels))
        calls[f"{name} forward"] = lambda f=forward: jax.block_until_ready(f(variables, xs))
        calls[f"{name} gradient"] = lambda g=gradient: jax.block_until_ready(g(variables, xs, labels))
        outputs[name] = (calls[f"{name} forward"](), calls[f"{name} gradient"]())
    seconds = time_interleaved(calls, repeats)
    device = jax.devices()[0]
    return {
        "device": f"{device.platform} ({device.device_kind})", "width": width, "size": size, "batch": batch,
        "gamma": gamma,
        "logits_rel_difference": _relative(outputs["default"][0], outputs["highest"][0]),
        "grad_rel_difference": _relative(outputs["default"][1], outputs["highest"][1]),
        "seconds": {name: timing["median"] for name, timing in seconds.items()},
    }


def main(argv):
    del argv
    result = compare(FLAGS.width, FLAGS.size, FLAGS.batch, FLAGS.gamma, FLAGS.repeats)
    print(f"PA-ResSeg width {result['width']}, batch {result['batch']} x {result['size']} px, float32, attention "
          f"gammas {result['gamma']}, on {result['device']}")
    print(f"default vs HIGHEST attention matmuls: logits differ by {result['logits_rel_difference']:.2e}, "
          f"the gradient by {result['grad_rel_difference']:.2e} (relative norm)")
    for name, s in result["seconds"].items():
        print(f"  {name:<18} {s:.4f} s per call")
    if FLAGS.json:
        atomic.write_text(FLAGS.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
