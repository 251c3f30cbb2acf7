"""paresseg-demo: the whole system on built-in synthetic data, one command.

    paresseg-demo --workdir=runs/demo          # about 10 minutes on 2 CPU cores
    paresseg-demo --workdir=runs/full --full   # the paper's widths and schedule (GPU)

Generates a phantom cohort (five tumor types, two scanner profiles),
preprocesses it (ART-to-PV registration included), trains the liver model,
a single-phase ResSeg and PA-ResSeg, segments the held-out cases with the
cascade and writes <workdir>/report.md with tables, curves and overlays.
Rerunning with the same --workdir reuses every finished stage.
"""

from absl import flags

from paresseg_jax import cli
from paresseg_jax.experiments import demo

_WORKDIR = flags.DEFINE_string("workdir", None, "folder for the cohort, cache, runs and report.md (reused on rerun)", required=True)
_FULL = flags.DEFINE_bool("full", False, "paper scale: width 64, 224 px patches, 512x512 cases, long schedule (for a GPU)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the cohort, the initialisation and the data order")


def main(argv):
    del argv
    demo.run_demo(_WORKDIR.value, full=_FULL.value, seed=_SEED.value)


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
