"""What ``precise_attention`` costs and buys: PA-ResSeg forward and gradient with the attention matmuls at
``Precision.HIGHEST`` and at the backend's default (TF32 on Ampere and newer GPUs), against float64.

``paresseg-bench precision [--width=64] [--size=224] [--batch=2] [--gamma=1] [--json=out.json]``
sets every attention ``gamma`` to ``--gamma`` (at init they are 0 and the
attention does not reach the output), runs the eval-mode logits and the
train-mode cross-entropy gradient in float32 both ways and in float64
(``JAX_ENABLE_X64=1`` is set for this process), and prints the relative error
of each against float64 and the median seconds per call. On a CPU both
float32 settings compute the same thing; on a GPU the difference is TF32's.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_ENABLE_X64", "1")  # before jax is imported: the float64 reference needs it

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from paresseg_jax import atomic, models  # noqa: E402
from paresseg_jax.benchmarks.timing import time_interleaved  # noqa: E402

_WIDTH = flags.DEFINE_integer("width", 64, "model width (the reference's nc)")
_SIZE = flags.DEFINE_integer("size", 224, "input height and width")
_BATCH = flags.DEFINE_integer("batch", 2, "batch size")
_GAMMA = flags.DEFINE_float("gamma", 1.0, "value given to every attention gamma")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per variant")
_JSON = flags.DEFINE_string("json", None, "also write the results here")


def _with_gammas(variables, gamma: float):
    def set_gamma(path, leaf):
        return jnp.full_like(leaf, gamma) if jax.tree_util.keystr(path).endswith("['gamma']") else leaf

    return jax.tree_util.tree_map_with_path(set_gamma, variables)


def compare(width: int, size: int, batch: int, gamma: float, repeats: int) -> dict:
    """Relative errors vs float64 and seconds per call of the forward pass and the gradient, both settings."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("the float64 reference needs JAX_ENABLE_X64=1 before jax is imported")
    reference = models.create("paresseg", width=width, dtype="float64")
    variables = _with_gammas(models.init_variables(reference, jax.random.key(0)), gamma)
    rng = np.random.default_rng(0)
    inputs = [rng.random((batch, size, size, 3)) for _ in reference.phases]
    labels = jnp.asarray(rng.random((batch, size, size)) > 0.8, jnp.int32)

    def functions(module, dtype):
        cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)  # noqa: E731
        xs = [jnp.asarray(x, dtype) for x in inputs]
        params = cast(variables)

        def loss(p):
            logits, _ = module.apply({**params, "params": p}, *xs, train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], -1))

        forward = jax.jit(lambda: module.apply(params, *xs, train=False))
        gradient = jax.jit(lambda: jax.grad(loss)(params["params"]))
        return forward, gradient

    exact_forward, exact_gradient = functions(reference, jnp.float64)
    exact_logits = np.asarray(exact_forward())
    exact_grad = [np.asarray(g) for g in jax.tree.leaves(exact_gradient())]
    results = {}
    for precise in (True, False):
        module = models.create("paresseg", width=width, dtype="float32", precise_attention=precise)
        forward, gradient = functions(module, jnp.float32)
        logits = np.asarray(forward(), np.float64)
        grads = [np.asarray(g, np.float64) for g in jax.tree.leaves(gradient())]
        grad_error = np.sqrt(sum(np.sum((g - e) ** 2) for g, e in zip(grads, exact_grad)))
        grad_norm = np.sqrt(sum(np.sum(e**2) for e in exact_grad))
        seconds = time_interleaved({"forward": lambda: forward().block_until_ready(),
                                    "gradient": lambda: jax.block_until_ready(gradient())}, repeats)
        results["highest" if precise else "default"] = {
            "logits_rel_error": float(np.abs(logits - exact_logits).max() / np.abs(exact_logits).max()),
            "grad_rel_error": float(grad_error / grad_norm),
            "forward_s": seconds["forward"]["median"], "gradient_s": seconds["gradient"]["median"],
        }
    device = jax.devices()[0]
    return {"device": f"{device.platform} ({device.device_kind})", "width": width, "size": size, "batch": batch,
            "gamma": gamma, "results": results}


def main(argv):
    del argv
    result = compare(_WIDTH.value, _SIZE.value, _BATCH.value, _GAMMA.value, _REPEATS.value)
    print(f"PA-ResSeg width {result['width']}, batch {result['batch']} x {result['size']} px, attention gammas "
          f"{result['gamma']}, on {result['device']}; float32 vs float64")
    print(f"{'attention matmuls':<20}{'logits rel. err':>16}{'grad rel. err':>15}{'forward s':>11}{'gradient s':>12}")
    for name, r in result["results"].items():
        print(f"{name:<20}{r['logits_rel_error']:>16.2e}{r['grad_rel_error']:>15.2e}{r['forward_s']:>11.4f}"
              f"{r['gradient_s']:>12.4f}")
    if _JSON.value:
        atomic.write_text(_JSON.value, json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
