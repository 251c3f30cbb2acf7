"""paresseg-robustness: a trained model's Dice with ART misaligned by 0-10 mm, and without ART.

    paresseg-robustness --workdir=runs/paresseg --liver_workdir=runs/liver   # shifts and deformations, 0-10 mm
    paresseg-robustness --workdir=runs/paresseg_pd --roi=oracle_gt_liver --absent=art --magnitudes=0

Scores the run's test cases (split.json) with its config.eval.checkpoint model,
as paresseg-evaluate does (the cascade ROI of --liver_workdir, a liver-ResSeg
trained on the same folds, unless --roi names the oracle), once per condition into
WORKDIR/perturbed/<condition>/summary.json (compare conditions with
paresseg-evaluate --run NAME=WORKDIR/perturbed/<condition>) and prints the
mean Dice of each.
"""

from absl import flags

from paresseg_jax import cli, flag_checks
from paresseg_jax.evaluate import robustness

_WORKDIR = flags.DEFINE_string("workdir", None, "a paresseg-train workdir (its model and held-out cases)", required=True)
_MAGNITUDES = flags.DEFINE_list("magnitudes", ["0", "2", "4", "6", "8", "10"], "misalignments to apply, in mm")
_KINDS = flags.DEFINE_list("kinds", list(robustness.KINDS), "shift (rigid, a random direction per case) and/or "
                           "deformation (smooth; the largest displacement is the magnitude)")
_PHASE = flags.DEFINE_string("phase", "art", "the phase to misalign")
_ABSENT = flags.DEFINE_list("absent", [], "also score with these phases left out (models trained with phase dropout)")
_SEED = flags.DEFINE_integer("seed", 0, "fixes each case's shift direction and deformation pattern")
_CACHE = flags.DEFINE_string("cache_dir", None, "read the held-out cases from this cache instead of the run's (the "
                             "cohort preprocessed otherwise, e.g. without registration or rigid only)")
_PREFIX = flags.DEFINE_string("prefix", "", "prepended to each condition's folder name (e.g. rigid_)")
_LIVER = flags.DEFINE_string("liver_workdir", None, "liver-ResSeg run for the cascade ROI (its test cases must be the run's)")
_ROI = flags.DEFINE_enum("roi", None, ["cascade", "oracle_gt_liver"], "ROI source (default: the run's config.eval.roi)")


def main(argv):
    del argv
    magnitudes = flag_checks.numbers("magnitudes", _MAGNITUDES.value, float, low=0.0)
    dpc = robustness.evaluate_perturbed(
        _WORKDIR.value, magnitudes_mm=magnitudes, kinds=_KINDS.value,
        absent=_ABSENT.value, phase=_PHASE.value, seed=_SEED.value, cache_dir=_CACHE.value, prefix=_PREFIX.value,
        liver_workdir=_LIVER.value, roi=_ROI.value)
    for name, value in dpc.items():
        print(f"{name:>20}  DPC {100 * value:6.2f}%")


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
