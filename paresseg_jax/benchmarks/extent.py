"""Whole-slice vs ROI-crop inference of a trained run: how much the crop changes the segmentation.

``paresseg-bench extent --run=WORKDIR [--liver_workdir=LIVER] [--json=out.json]``
segments the run's test cases (its ``split.json``) twice with its
``config.eval`` settings, on whole slices and cropped to the ROI's bounding
box (``crop_to_roi``, ``roi_margin``), inside the same ROI: the cascade's
(the liver run's dilated prediction) with ``--liver_workdir``, else the
cache's ground-truth one. Outside the ROI both are 0, so any difference comes
from what the network computes at the crop: zero padding at the box's edge
instead of the features beyond it, and channel-attention energies summed
over the box instead of the whole slice. Prints per case the Dice of both
against the ground truth, the voxels whose label changed, the largest
probability change and the seconds of each (the first case includes
compilation), and the attention gammas of the model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags

from paresseg_jax import atomic
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.data import preprocess
from paresseg_jax.evaluate.scoring import load_run_model, run_split
from paresseg_jax.infer.cascade import predict_options, segment_options, segment_study, threshold_for
from paresseg_jax.infer.predict import binarize, predict_volume
from paresseg_jax.metrics import dice
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import read_config

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_string("run", None, "a paresseg-train workdir (tumor target) to measure", required=True)
    flags.DEFINE_string("liver_workdir", None, "liver-ResSeg run for the cascade ROI (default: ground-truth ROI)")
    flags.DEFINE_string("json", None, "also write the results here")


def attention_gammas(variables) -> dict[str, float]:
    """The learned ``gamma`` of every reference-form attention module (0 at init: then the crop cannot act there)."""
    found = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables.get("params", {})):
        name = jax.tree_util.keystr(path)
        if name.endswith("['gamma']"):
            found[name.replace("']['", "/").strip("[']")] = float(np.asarray(leaf).ravel()[0])
    return found


def measure(run: str | Path, liver_workdir: str | Path | None = None) -> dict:
    """Per-case whole-slice vs ROI-crop Dice, changed voxels and seconds on ``run``'s test cases."""
    config = ml_collections.ConfigDict(read_config(run))
    eval_config = config.eval.to_dict()
    checkpoint = eval_config["checkpoint"]
    tumor = load_run_model(run, checkpoint)
    liver = None if liver_workdir is None else load_run_model(liver_workdir, read_config(liver_workdir)["eval"]["checkpoint"])
    dilation = int(preprocess.resolve_config(config.data.preprocess)["roi_dilation"])
    threshold = threshold_for(eval_config, "tumor")
    options = {k: v for k, v in predict_options(eval_config).items() if k != "crop_to_roi"}
    rows = []
    for case in cache_lib.open_cohort(prepared_cache(config), run_split(run)["test"]):
        images = {p: np.asarray(case.image(p)) for p in dict.fromkeys(("pv", *tumor[0].phases))}
        roi = case.roi if liver is None else segment_study(
            images, tumor, liver_model=liver, roi_dilation=dilation, **segment_options(eval_config))["roi"]
        prob, seconds = {}, {}
        for crop in (False, True):
            start = time.perf_counter()
            prob[crop] = predict_volume(*tumor, images, roi, crop_to_roi=crop, **options)
            seconds[crop] = time.perf_counter() - start
        whole, cropped = binarize(prob[False], threshold), binarize(prob[True], threshold)
        rows.append({
            "case": case.case_id, "tumor_type": case.tumor_type,
            "dice_whole": dice(whole, case.tumor), "dice_crop": dice(cropped, case.tumor),
            "changed_voxels": int(np.count_nonzero(whole != cropped)), "tumor_voxels_whole": int(whole.sum()),
            "max_prob_change": float(np.abs(prob[False] - prob[True]).max()),
            "seconds_whole": seconds[False], "seconds_crop": seconds[True],
        })
    return {"run": str(run), "roi": "cascade" if liver else "oracle_gt_liver", "checkpoint": checkpoint,
            "gammas": attention_gammas(tumor[1]), "cases": rows}


def main(argv):
    del argv
    result = measure(FLAGS.run, FLAGS.liver_workdir)
    print(f"{result['run']} ({result['checkpoint']} model, {result['roi']} ROI): whole slices vs ROI crop")
    print(f"{'case':<12}{'type':<6}{'Dice whole':>11}{'Dice crop':>10}{'changed':>9}{'of tumor':>9}{'max dp':>9}"
          f"{'s whole':>9}{'s crop':>8}")
    for r in result["cases"]:
        print(f"{r['case']:<12}{r['tumor_type'] or '-':<6}{100 * r['dice_whole']:>11.2f}{100 * r['dice_crop']:>10.2f}"
              f"{r['changed_voxels']:>9d}{r['tumor_voxels_whole']:>9d}{r['max_prob_change']:>9.4f}"
              f"{r['seconds_whole']:>9.2f}{r['seconds_crop']:>8.2f}")
    cases = result["cases"]
    print(f"DPC whole {100 * np.mean([r['dice_whole'] for r in cases]):.2f}, crop "
          f"{100 * np.mean([r['dice_crop'] for r in cases]):.2f}; changed voxels {sum(r['changed_voxels'] for r in cases)} "
          f"of {sum(r['tumor_voxels_whole'] for r in cases)} predicted tumor voxels")
    if result["gammas"]:
        values = np.array(list(result["gammas"].values()))
        print(f"attention gammas: {len(values)}, |gamma| from {np.abs(values).min():.4f} to {np.abs(values).max():.4f}")
    if FLAGS.json:
        atomic.write_text(FLAGS.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
