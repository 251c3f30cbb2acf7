"""paresseg-postprocess: choose postprocessing on a training run's validation cases and store it with its model.

    paresseg-postprocess --workdir=runs/paresseg --liver_workdir=runs/liver
    paresseg-postprocess --workdir=runs/paresseg --roi=oracle_gt_liver

The run's validation cases (split.json; never its test cases) are segmented
as paresseg-evaluate segments test cases; each step (liver: largest
component, filled holes; tumor: lesions outside the liver, lesions under a
minimum volume) is kept only when it raises their mean Dice. The choice goes
to postprocessing.json in the run's model folder (config.eval.checkpoint), and
paresseg-predict applies it and records it in every report and summary.json.
"""

import json

from absl import flags

from paresseg_jax import cli, preflight

_WORKDIR = flags.DEFINE_string("workdir", None, "the tumor model's paresseg-train workdir (with validation cases)",
                               required=True)
_LIVER = flags.DEFINE_string("liver_workdir", None, "liver-ResSeg run trained on the same folds (the cascade ROI)")
_ROI = flags.DEFINE_enum("roi", None, ["cascade", "oracle_gt_liver"], "ROI (default: the run's config.eval.roi)")


def main(argv):
    del argv
    preflight.existing(_WORKDIR.value, "the run (--workdir)")
    if _LIVER.value:
        preflight.existing(_LIVER.value, "the liver run (--liver_workdir)")
    from paresseg_jax.evaluate import postprocess_choice

    choice = postprocess_choice.choose_for_run(_WORKDIR.value, liver_workdir=_LIVER.value, roi=_ROI.value)
    print(json.dumps(choice, indent=1))


def run():
    cli.run_app(main, huge_page_malloc=False)


if __name__ == "__main__":
    run()
