"""paresseg-ablation: the paper's Table 4 rows and the DMP / MPF baselines on a synthetic cohort.

    paresseg-ablation --workdir=runs/ablation                       # CPU scale
    paresseg-ablation --workdir=runs/ablation --runs=resseg,paresseg --steps=2000
    paresseg-ablation --workdir=runs/ablation_full --full           # paper widths (GPU)
    paresseg-ablation --workdir=runs/mine --rows=my_rows.toml       # rows of your own

The rows (label, run folder, config, overrides) are a TOML file: by default
the built-in configs/ablation.toml, which describes the format.

Every row is scored as paresseg-evaluate scores a run: the held-out fold, the
last model, through the paper's cascade (one liver-ResSeg trained on the same
folds). Prints the protocol, the metrics beside the paper's and the DPC per
tumor type, and writes <workdir>/ablation.md. Finished rows are reused on a rerun.
"""

import dataclasses

from absl import flags

from paresseg_jax import cli
from paresseg_jax import ablation, demo

_WORKDIR = flags.DEFINE_string("workdir", None, "folder for the cohort, runs and ablation.md (reused on rerun)", required=True)
_ROWS = flags.DEFINE_string("rows", None, "TOML file of [[row]] tables (default: the built-in configs/ablation.toml)")
_RUNS = flags.DEFINE_list("runs", None, "run only these rows, by run folder name (default: every row)")
_FULL = flags.DEFINE_bool("full", False, "paper scale (width 64, 224 px patches, 512x512 cases, long schedule) for a GPU")
_NUM_CASES = flags.DEFINE_integer("num_cases", None, "cohort size (default: the demo's for the chosen scale)")
_WIDTH = flags.DEFINE_integer("width", None, "network width nc (default: the demo's; the paper's is 64)")
_SIZE = flags.DEFINE_integer("size", None, "in-plane size of the phantom cases in pixels (default: the demo's)")
_SLICES = flags.DEFINE_integer("slices", None, "slices per phantom case (default: the demo's)")
_STEPS = flags.DEFINE_integer("steps", None, "training steps per row (default: the demo's tumor-model steps)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the cohort, the initialisation and the data order")


def main(argv):
    del argv
    scale = demo.FULL if _FULL.value else demo.SMALL
    changes = {"num_cases": _NUM_CASES.value, "width": _WIDTH.value, "tumor_steps": _STEPS.value}
    if _SIZE.value or _SLICES.value:
        slices, size, _ = scale.shape
        changes["shape"] = (_SLICES.value or slices, _SIZE.value or size, _SIZE.value or size)
    scale = dataclasses.replace(scale, **{k: v for k, v in changes.items() if v is not None})
    rows = ablation.read_rows(_ROWS.value)
    print(ablation.run_ablation(_WORKDIR.value, scale, rows, runs=_RUNS.value, seed=_SEED.value))


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
