"""paresseg-crosscheck: where a PyTorch model and its JAX port part ways, layer by layer.

    # the packaged oracle of the reference PA-ResSeg, random weights, float32
    paresseg-crosscheck --width=8
    # the official code's network, its weights, float64, with parameter gradients, table as JSON
    JAX_ENABLE_X64=1 paresseg-crosscheck --torch_module=PA-ResSeg/network/resnet.py:RESNET_phase_att \\
        --torch_kwargs='{"nc": 64}' --weights=PA-ResSeg_batch1.pth --dtype=float64 --grads --json=check.json

Both models run the same weights (the JAX model is converted from the PyTorch state_dict) on the
same input. It prints every layer's largest absolute and relative difference and names the first
layer (in PyTorch's execution order) above the tolerance; exit status 1 when there is one.
With --steps=N both train N Adam steps on identical batches of --cache_dir instead:

    JAX_ENABLE_X64=1 paresseg-crosscheck --steps=20 --cache_dir=data/phantom_cache/<hash> --dtype=float64 --loss=be
"""

import json

from absl import app, flags

from paresseg_jax import cli, preflight

_TORCH_MODULE = flags.DEFINE_string("torch_module", None, "path/to/file.py:ClassName of a PyTorch module with the "
                                    "reference's layer names (default: the packaged oracle, --arch)")
_TORCH_KWARGS = flags.DEFINE_string("torch_kwargs", "{}", "JSON keyword arguments for --torch_module's class")
_ARCH = flags.DEFINE_enum("arch", "RESNET_phase_att", ["RESNET_phase_att", "RESNET_2D"], "the oracle's network")
_WIDTH = flags.DEFINE_integer("width", 8, "the oracle's width (nc)")
_ATTENTION = flags.DEFINE_enum("attention", "reference", ["reference", "paper"], "the oracle's attention variant")
_WEIGHTS = flags.DEFINE_string("weights", None, "a .pth state_dict to load (default: random weights from --seed)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "both sides' precision")
_SIZE = flags.DEFINE_integer("size", 64, "input height and width")
_BATCH = flags.DEFINE_integer("batch", 2, "input batch")
_SEED = flags.DEFINE_integer("seed", 0, "random weights and input")
_GRADS = flags.DEFINE_boolean("grads", False, "also compare cross-entropy parameter gradients (train mode)")
_TOLERANCE = flags.DEFINE_float("tolerance", None, "largest relative difference (default 1e-4 float32, 1e-9 float64)")
_JSON = flags.DEFINE_string("json", None, "also write the table here")
_STEPS = flags.DEFINE_integer("steps", 0, "instead, train both for this many Adam steps on identical batches of "
                              "--cache_dir and report loss and parameter differences per step")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "a preprocessed cache (paresseg-train's) the --steps batches "
                                 "come from, crops of --size")
_LOSS = flags.DEFINE_enum("loss", "ce", ["ce", "be"], "--steps: cross-entropy or the boundary-enhanced loss")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 5e-4, "--steps: Adam's learning rate")


def main(argv):
    del argv
    if _WEIGHTS.value:
        preflight.existing(_WEIGHTS.value, "the weights (--weights)")
    if _JSON.value:
        preflight.output_file(_JSON.value, "the table (--json)", (".json",), overwrite=True)
    if _DTYPE.value == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from paresseg_jax.atomic import write_text
    from paresseg_jax.interop import check

    model = check.load_torch_model(_TORCH_MODULE.value, _TORCH_KWARGS.value, weights=_WEIGHTS.value, arch=_ARCH.value,
                                   width=_WIDTH.value, attention=_ATTENTION.value, seed=_SEED.value)
    if _STEPS.value:
        diverged = _steps(model)
    else:
        report = check.crosscheck(model, dtype=_DTYPE.value, batch=_BATCH.value, size=_SIZE.value, seed=_SEED.value,
                                  grads=_GRADS.value, tolerance=_TOLERANCE.value)
        print(check.format_report(report))
        if _JSON.value:
            write_text(_JSON.value, json.dumps(report, indent=1))
        diverged = report["first_divergent"] or report["first_divergent_grad"]
    if diverged:
        raise SystemExit(1)


def _steps(model) -> bool:
    """The --steps trajectory: prints and writes its table; True when a step exceeds the tolerance."""
    from paresseg_jax.atomic import write_text
    from paresseg_jax.interop import check, trajectory

    if not _CACHE_DIR.value:
        raise app.UsageError("--steps needs --cache_dir (a preprocessed cache, e.g. <cohort>_cache/<hash>)")
    preflight.existing(_CACHE_DIR.value, "the cache (--cache_dir)")
    rows = trajectory.check_training(model, _CACHE_DIR.value, _STEPS.value, loss=_LOSS.value, dtype=_DTYPE.value,
                                     batch=_BATCH.value, crop=_SIZE.value, seed=_SEED.value,
                                     learning_rate=_LEARNING_RATE.value)
    tolerance = check.TOLERANCES[_DTYPE.value] if _TOLERANCE.value is None else _TOLERANCE.value
    print(trajectory.format_trajectory(rows, tolerance))
    if _JSON.value:
        write_text(_JSON.value, json.dumps({"dtype": _DTYPE.value, "loss": _LOSS.value, "steps": rows}, indent=1))
    return trajectory.first_step_above(rows, tolerance) is not None


def run():
    cli.run_app(main, huge_page_malloc=False, cache_compilations=False)


if __name__ == "__main__":
    run()
