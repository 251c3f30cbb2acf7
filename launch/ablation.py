"""paresseg-ablation: a study of model variants on a synthetic cohort, every fold, one or more seeds.

    paresseg-ablation --workdir=runs/beyond --rows=beyond_the_paper --steps=250 --jobs=2
                                    # spatial block, phase dropout, misregistration: 65 min on 2 cores
    paresseg-ablation --workdir=runs/ablation                        # the paper's Table 4 + DMP, MPF
    paresseg-ablation --workdir=runs/ablation --folds=0 --runs=resseg,paresseg --seeds=0,1,2
    paresseg-ablation --workdir=runs/ablation_full --full            # paper widths (GPU)
    paresseg-ablation --workdir=runs/mine --rows=my_rows.toml        # a study of your own

A study is a TOML file (default: the built-in configs/ablation.toml, which
describes the format): [[row]]s of label, run folder, config and overrides,
optional pairs to compare and an optional [robustness] table.

Each row trains once per seed on each fold (the fold held out) and is scored
as paresseg-evaluate scores a run: last model, the paper's cascade with the
liver-ResSeg of the same folds, whole slices, p >= 0.6. The plan (number of
trainings) prints first and the time left after each training; --jobs runs
trainings side by side, each in its own process (output in <workdir>/logs). Writes
<workdir>/ablation.md: DPC mean +- sd over seeds, per-case paired tests
(t-test, Wilcoxon, Benjamini-Hochberg q) and figures. Finished trainings and
scorings are reused on a rerun.
"""

import dataclasses

from absl import flags

from paresseg_jax import cli, flag_checks
from paresseg_jax.data import phantom, phantom_scale
from paresseg_jax.experiments import ablation, ablation_plan

_WORKDIR = flags.DEFINE_string("workdir", None, "folder for the cohort, runs and ablation.md (reused on rerun)", required=True)
_ROWS = flags.DEFINE_string("rows", None, "the study: a built-in one by name (ablation, beyond_the_paper) or a TOML "
                            "file of [[row]] tables (default: ablation, the paper's Table 4 rows, DMP and MPF)")
_RUNS = flags.DEFINE_list("runs", None, "run only these rows, by run folder name (default: every row)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "training seeds (initialisation and data order); each row trains once per "
                           "seed and fold, and the report gives DPC mean +- sd over seeds")
_FOLDS = flags.DEFINE_list("folds", None, "held-out folds to run (default: every fold)")
_FULL = flags.DEFINE_bool("full", False, "paper scale (width 64, 224 px patches, 512x512 cases, long schedule) for a GPU")
_NUM_CASES = flags.DEFINE_integer("num_cases", None, "cohort size (default: the demo's for the chosen scale)")
_WIDTH = flags.DEFINE_integer("width", None, "network width nc (default: the demo's; the paper's is 64)")
_SIZE = flags.DEFINE_integer("size", None, "in-plane size of the phantom cases in pixels (default: the demo's)")
_SLICES = flags.DEFINE_integer("slices", None, "slices per phantom case (default: the demo's)")
_STEPS = flags.DEFINE_integer("steps", None, "training steps per row (default: the demo's tumor-model steps)")
_LIVER_STEPS = flags.DEFINE_integer("liver_steps", None, "training steps of each fold's liver-ResSeg (default: the "
                                    "demo's liver-model steps)")
_COHORT_SEED = flags.DEFINE_integer("cohort_seed", 0, "seed of the phantom cohort (the same for every training seed)")
_JOBS = flags.DEFINE_integer("jobs", 1, "trainings at a time, each in its own process (results do not depend on it); "
                             "on a CPU one per 2 cores or so, on a GPU 1 (a process takes most of its memory)",
                             lower_bound=1)


def main(argv):
    del argv
    scale = phantom_scale.FULL if _FULL.value else phantom_scale.SMALL
    flag_checks.all_in_range(
        {"num_cases": _NUM_CASES.value, "width": _WIDTH.value, "size": _SIZE.value, "slices": _SLICES.value,
         "steps": _STEPS.value, "liver_steps": _LIVER_STEPS.value, "jobs": _JOBS.value},
        {"num_cases": dict(low=scale.num_folds, meaning="a test case in each of the folds"), "width": dict(low=1),
         "size": dict(low=phantom.MIN_SHAPE[1]), "slices": dict(low=phantom.MIN_SHAPE[0]), "steps": dict(low=1),
         "liver_steps": dict(low=1), "jobs": dict(low=1)})
    seeds = flag_checks.numbers("seeds", _SEEDS.value, low=0)
    folds = flag_checks.numbers("folds", _FOLDS.value, low=0, high=scale.num_folds - 1)
    changes = {"num_cases": _NUM_CASES.value, "width": _WIDTH.value, "tumor_steps": _STEPS.value,
               "liver_steps": _LIVER_STEPS.value}
    if _SIZE.value or _SLICES.value:
        slices, size, _ = scale.shape
        changes["shape"] = (_SLICES.value or slices, _SIZE.value or size, _SIZE.value or size)
    scale = dataclasses.replace(scale, **{k: v for k, v in changes.items() if v is not None})
    study = ablation_plan.read_plan(_ROWS.value)
    print(ablation.run_ablation(_WORKDIR.value, scale, study, runs=_RUNS.value, seeds=seeds,
                                folds=folds, cohort_seed=_COHORT_SEED.value, jobs=_JOBS.value))


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
