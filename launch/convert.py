"""paresseg-convert: PyTorch reference checkpoints <-> our saved models.

    # a reference RESNET_phase_att / RESNET_2D .pth -> a saved-model folder
    paresseg-convert --input=PA-ResSeg_batch1.pth --output=models/paresseg_fold1
    # a saved model or a paresseg-train workdir -> a .pth the reference code loads
    paresseg-convert --input=runs/paresseg --output=paresseg.pth

The direction follows --input: a file is read as a PyTorch checkpoint, a
folder as a saved model. Architecture, width, input channels and classes
are read from the weights. The output is written whole or not at all; an
existing .pth or a non-empty output folder is replaced only with --overwrite.
"""

from absl import flags

from paresseg_jax import cli, extras, preflight
from paresseg_jax.interop import torch as interop

_INPUT = flags.DEFINE_string("input", None, ".pth file, or a saved-model folder / training workdir", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "saved-model folder (from a .pth), or .pth file (from a folder)",
                              required=True)
_ARCH = flags.DEFINE_enum("arch", None, sorted(interop.ARCHITECTURES),
                          "reference architecture of the .pth (default: inferred from its keys)")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "replace an existing --output")


def main(argv):
    del argv
    extras.require("torch", "paresseg-convert", "torch")
    source = preflight.existing(_INPUT.value, "the input (--input)")
    preflight.outputs_apart([(_OUTPUT.value, "the output (--output)")], [source], whole=True)
    if source.is_dir():
        preflight.output_file(_OUTPUT.value, "the output (--output)", (".pth", ".pt"), overwrite=_OVERWRITE.value)
        written = interop.saved_model_to_torch_checkpoint(source, _OUTPUT.value)
    else:
        preflight.output_folder(_OUTPUT.value, "the output (--output)", overwrite=_OVERWRITE.value)
        written = interop.torch_checkpoint_to_saved_model(source, _OUTPUT.value, _ARCH.value)
    print(f"wrote {written}")


def run():
    cli.run_app(main, huge_page_malloc=False, cache_compilations=False)


if __name__ == "__main__":
    run()
