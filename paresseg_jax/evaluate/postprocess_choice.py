"""Postprocessing chosen on a training run's validation cases, stored beside its model (``paresseg-postprocess``).

The run's validation cases (``split.json``, carved from its training folds)
are segmented as scoring segments test cases (the run's checkpoint, ROI and
threshold: ``evaluate.scoring``), then ``paresseg_jax.postprocess.choose``
keeps the steps that raise their mean Dice. Test cases are never looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections
import numpy as np
from tqdm import tqdm

from paresseg_jax import postprocess
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.data import preprocess
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate.scoring import CASCADE, ROI_SOURCES, load_run_model, run_liver_model, run_split
from paresseg_jax.infer.cascade import segment_options, segment_study
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import CHECKPOINT_CHOICES, read_config


def choose_for_run(workdir: str | os.PathLike, *, liver_workdir: str | os.PathLike | None = None,
                   roi: str | None = None) -> dict:
    """Choose on the run's validation cases and write ``postprocessing.json`` into its scored model's folder
    (``config.eval.checkpoint``); returns the choice. ``roi`` and ``liver_workdir`` as for ``score_run``."""
    workdir = Path(workdir)
    config = read_config(workdir)
    if config is None or config["data"]["target"] != "tumor":
        raise PareSegError("is not a tumor run of paresseg-train (no config.json, or a liver run)", path=workdir,
                           fix="give the workdir of a tumor model's training")
    config = ml_collections.ConfigDict(config)
    split = run_split(workdir)
    if not split["validation"]:
        raise PareSegError("the run has no validation cases to choose postprocessing on", path=workdir,
                           fix="train with validation cases (config.data.val_fraction > 0)")
    eval_config = config.eval.to_dict()
    roi = roi or eval_config["roi"]
    if roi not in ROI_SOURCES:
        raise PareSegError(f"roi={roi!r} is unknown", fix=f"use one of {ROI_SOURCES}")
    liver_model = run_liver_model(workdir, split, liver_workdir) if roi == CASCADE else None
    checkpoint = eval_config["checkpoint"]
    tumor_model = load_run_model(workdir, checkpoint)
    roi_dilation = int(preprocess.resolve_config(config.data.preprocess)["roi_dilation"])
    cases = cache_lib.open_cohort(prepared_cache(config), split["validation"])
    predictions = [_prediction(case, tumor_model, liver_model, eval_config, roi_dilation)
                   for case in tqdm(cases, desc="validation", unit="case", leave=False)]
    choice = postprocess.choose(predictions)
    postprocess.write(workdir / CHECKPOINT_CHOICES[checkpoint], choice, workdir=str(workdir.absolute()),
                      roi=roi, validation_cases=list(split["validation"]))
    return choice


def _prediction(case, tumor_model, liver_model, eval_config, roi_dilation) -> dict:
    """A validation case's masks before postprocessing: the cascade's liver (None with the oracle ROI, which is
    the ground truth) and tumor, beside the ground truth."""
    module = tumor_model[0]
    images = {p: np.asarray(case.image(p)) for p in dict.fromkeys(("pv", *module.phases))}
    oracle = liver_model is None
    result = segment_study(images, tumor_model, liver_model=liver_model,
                           liver=np.asarray(case.liver) if oracle else None, roi_dilation=roi_dilation,
                           **segment_options(eval_config))
    return {"liver": None if oracle else result["liver"], "tumor": result["mask"], "liver_gt": np.asarray(case.liver),
            "tumor_gt": np.asarray(case.tumor), "spacing_zyx": case.spacing_zyx}
