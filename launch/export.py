"""paresseg-export: a trained model as a folder that runs without this package's model code.

    paresseg-export --model=runs/paresseg --output=paresseg.jaxexport
    paresseg-predict --pv=pv.nii.gz --art=art.nii.gz --model=paresseg.jaxexport --out=mask.nii.gz

The folder holds the forward pass serialised by jax.export in float32 and bfloat16 (weights included;
any batch, height and width), model.json, the run's config.json and MODEL_CARD.md (architecture and
phases, training data, split and protocol, test metrics with n where the run was scored, intended
use). It does not hold the Python preprocessing (registration to PV, HU window, liver ROI).
"""

from absl import flags

from paresseg_jax import cli, preflight

_MODEL = flags.DEFINE_string("model", None, "a saved model or a paresseg-train workdir", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "the folder to write, named <name>.jaxexport", required=True)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "replace an existing --output")


def main(argv):
    del argv
    preflight.models([_MODEL.value], "the model (--model)")
    preflight.output_folder(_OUTPUT.value, "the output (--output)", overwrite=_OVERWRITE.value)
    from paresseg_jax import exported

    print(f"wrote {exported.export_run(_MODEL.value, _OUTPUT.value)}")


def run():
    cli.run_app(main, huge_page_malloc=False)


if __name__ == "__main__":
    run()
