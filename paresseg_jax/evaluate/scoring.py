"""Scoring a trained run: the one path behind every reported number.

``paresseg-evaluate``, :func:`~paresseg_jax.experiments.crossval.cross_validate`,
the demo and the ablation all call :func:`score_run`, so one run gives the
same per-case records whichever of them reports it. The protocol is the
paper's unless a config says otherwise, and every ``summary.json`` states it:

- runs: finished trainings only (``status.json``); a stopped one is refused;
- cases: the run's ``test`` ids from its ``split.json`` (its held-out fold),
  never the cases it trained or chose a checkpoint on;
- model: ``config.eval.checkpoint``, 'last' (the paper) or 'best' (chosen on
  validation cases carved from the training folds);
- ROI (``config.eval.roi``): 'cascade', the dilated prediction of a
  liver-ResSeg trained on the same training folds (the paper), or
  'oracle_gt_liver', the ground-truth liver's dilated ROI from the cache,
  an upper bound the paper does not report;
- extent: whole slices unless ``config.eval.crop_to_roi``; foreground where
  ``p >= threshold``;
- postprocessing: the choice ``paresseg-postprocess`` stored beside the
  scored model (made on validation cases), applied as ``paresseg-predict``
  applies it (``infer.cascade.postprocessed``), none without one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from paresseg_jax import model_io
from paresseg_jax.data import preprocess
from paresseg_jax.data.images import write_image
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.data.cache import CachedCase
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import provenance
from paresseg_jax.summary import evaluate_case, read_summary, write_summary
from paresseg_jax.infer.cascade import (postprocessed, predict_options, segment_options, segment_study,
                                        stored_postprocessing, threshold_for)
from paresseg_jax.infer.overlay import overlay_montage
from paresseg_jax.infer.predict import binarize, predict_volume
from paresseg_jax.metrics import dice
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import CHECKPOINT_CHOICES, SPLIT_FILE, check_finished, read_config, read_split

CASCADE = "cascade"
ORACLE = "oracle_gt_liver"
ROI_SOURCES = (CASCADE, ORACLE)
PREDICTIONS_DIR = "predictions"
OVERLAYS_DIR = "overlays"


def protocol(eval_config: Mapping, roi: str, target: str = "tumor") -> dict:
    """How a run's numbers were made, in the words a summary and a table print."""
    crop = bool(eval_config["crop_to_roi"])
    return {
        "checkpoint": eval_config["checkpoint"],
        "roi": roi if target == "tumor" else "none (liver target: whole slices)",
        "extent": f"ROI box + {eval_config['roi_margin']} px" if crop and target == "tumor" else "whole slices",
        "mode": eval_config["mode"],
        "threshold": f">= {threshold_for(eval_config, target)}",
    }


def score_cases(
    tumor_model: tuple,
    cases: Sequence[CachedCase],
    eval_config: Mapping,
    *,
    roi: str = CASCADE,
    liver_model: tuple | None = None,
    liver_masks: MutableMapping[str, np.ndarray] | None = None,
    roi_dilation: int = 5,
    target: str = "tumor",
    out_dir: str | os.PathLike | None = None,
    overlays: bool = False,
    title: str = "",
    postprocessing: Mapping | None = None,
    **info,
) -> list[dict]:
    """Segment and score cached cases; one :func:`evaluate_case` record each (``info`` added to each).

    ``tumor_model`` and ``liver_model`` are ``(module, variables)``. For the
    'tumor' target the ROI is the liver model's dilated prediction (``roi``
    'cascade', the record gets its ``liver_dice``) or the cache's
    ground-truth ROI ('oracle_gt_liver'); the 'liver' target (the cascade's
    first stage) is scored on whole slices against the liver mask. ``liver_masks``, by case id, holds the
    liver stage's masks and is filled with them: conditions that change only other phases than PV pass the
    same dict and run the liver model once per case (the result is the same). With
    ``out_dir``, masks go to ``out_dir/predictions/<case_id>.nii.gz`` (PV
    geometry) and, with ``overlays``, PNG montages to ``out_dir/overlays/``. ``postprocessing``: the scored
    model's stored choice (:func:`stored_postprocessing`), applied as paresseg-predict applies it.
    """
    if target not in ("tumor", "liver"):
        raise ValueError(f"target={target!r} (config.data.target) must be 'tumor' or 'liver'")
    if roi not in ROI_SOURCES:
        raise PareSegError(f"config.eval.roi={roi!r} is unknown", fix=f"use one of {ROI_SOURCES}")
    if target == "tumor" and roi == CASCADE and liver_model is None:
        raise PareSegError("the cascade ROI needs a liver model", fix=f"give one, or use roi={ORACLE!r} (an oracle)")
    records = []
    for case in tqdm(cases, desc="score", unit="case", leave=False):
        images = {p: np.asarray(case.image(p)) for p in dict.fromkeys(("pv", *tumor_model[0].phases))}
        mask, truth, extra = _segment_case(case, images, tumor_model, eval_config, roi=roi, liver_model=liver_model,
                                           liver_masks=liver_masks, roi_dilation=roi_dilation, target=target,
                                           postprocessing=postprocessing)
        spacing_zyx = case.spacing_zyx
        records.append(evaluate_case(mask, truth, spacing_zyx, case.case_id, case.tumor_type,
                                     scanner=case.metadata.get("scanner"), **extra, **info))
        if out_dir is not None:
            write_image(mask, case, Path(out_dir) / PREDICTIONS_DIR / f"{case.case_id}.nii.gz")
            if overlays:
                overlay_montage(
                    images["pv"], mask, Path(out_dir) / OVERLAYS_DIR / f"{case.case_id}.png", gt=truth,
                    spacing_zyx=spacing_zyx, max_slices=8,
                    title=f"{title + ': ' if title else ''}{case.case_id} ({case.tumor_type}), prediction red, truth green",
                )
    return records


def _segment_case(case: CachedCase, images: Mapping[str, np.ndarray], tumor_model: tuple, eval_config: Mapping, *,
                  roi: str, liver_model: tuple | None, liver_masks: MutableMapping[str, np.ndarray] | None,
                  roi_dilation: int, target: str,
                  postprocessing: Mapping | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mask, truth, extra record fields)`` of one case, as :func:`score_cases` describes; postprocessed as
    paresseg-predict would: the oracle's liver is a given mask, the cascade's a predicted one."""
    module, variables = tumor_model
    options = predict_options(eval_config)
    threshold = threshold_for(eval_config, target)
    if target == "liver":
        mask = binarize(predict_volume(module, variables, {"pv": images["pv"]}, **options), threshold)
        kept = postprocessed({"liver": None, "mask": mask}, case.spacing_zyx, postprocessing, liver_predicted=False)
        return kept["mask"], case.liver, {}
    if roi == ORACLE:
        mask = binarize(predict_volume(module, variables, images, case.roi, **options), threshold)
        given = {"liver": case.liver, "mask": mask}  # the ground-truth liver, as a mask paresseg-predict is given
        kept = postprocessed(given, case.spacing_zyx, postprocessing, liver_predicted=False)
        return kept["mask"], case.tumor, {}
    known = None if liver_masks is None else liver_masks.get(case.case_id)
    result = segment_study(images, tumor_model, liver_model=liver_model, liver=known, roi_dilation=roi_dilation,
                           **segment_options(eval_config))
    if liver_masks is not None:
        liver_masks[case.case_id] = result["liver"]  # as predicted: the next condition's ROI is this one's
    result = postprocessed(result, case.spacing_zyx, postprocessing, liver_predicted=True)
    return result["mask"], case.tumor, {"liver_dice": dice(result["liver"], case.liver)}


def run_split(workdir: str | os.PathLike) -> dict:
    """A run's ``split.json``, checked: its test cases are disjoint from its train and validation cases."""
    split = read_split(workdir)
    if split is None:
        raise PareSegError(
            f"no {SPLIT_FILE}: the run does not say which cases it trained, validated and was tested on",
            path=workdir, fix="give a workdir written by paresseg-train (runs trained before split.json: retrain)",
        )
    parts = [set(split[k]) for k in ("train", "validation", "test")]
    if parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]:
        raise PareSegError("train, validation and test case ids overlap", path=Path(workdir) / SPLIT_FILE,
                           fix="retrain in a new workdir")
    return split


def load_run_model(workdir: str | os.PathLike, checkpoint: str) -> tuple:
    """``(module, variables)`` of a training run's exported model for ``config.eval.checkpoint``."""
    if checkpoint not in CHECKPOINT_CHOICES:
        raise PareSegError(f"config.eval.checkpoint={checkpoint!r} is unknown", fix=f"use one of {sorted(CHECKPOINT_CHOICES)}")
    return model_io.load_model(Path(workdir) / CHECKPOINT_CHOICES[checkpoint])[:2]


def run_liver_model(workdir: str | os.PathLike, split: Mapping, liver_workdir: str | os.PathLike | None) -> tuple:
    """The cascade's ``(module, variables)``: the liver-ResSeg of ``liver_workdir``, whose test cases must be the
    tumor run's (``split``), so that it never trained on them either."""
    if liver_workdir is None:
        raise PareSegError(
            "the paper's cascade ROI needs the liver-ResSeg trained on this run's training folds",
            path=workdir, fix=f"give its workdir (--liver_workdir), or choose the oracle explicitly (--roi={ORACLE})",
        )
    check_finished(liver_workdir)
    liver_split = run_split(liver_workdir)
    if sorted(liver_split["test"]) != sorted(split["test"]):
        raise PareSegError(
            f"the liver run's test cases {liver_split['test']} are not this run's {split['test']}",
            path=liver_workdir, fix="train the liver model on the same folds (data.fold, num_folds, fold_seed)",
        )
    return load_run_model(liver_workdir, read_config(liver_workdir)["eval"]["checkpoint"])


def score_run(
    workdir: str | os.PathLike,
    *,
    liver_workdir: str | os.PathLike | None = None,
    roi: str | None = None,
    out_dir: str | os.PathLike | None = None,
    overlays: bool = False,
    title: str = "",
    reuse: bool = False,
    **info,
) -> dict:
    """Score a finished ``paresseg-train`` workdir on its test cases; writes and returns ``summary.json`` (in
    ``out_dir``, default the workdir). ``info`` (e.g. a run's name) goes into the summary's info, not the case
    records, so one run's records are the same whoever scores it.

    ``roi`` overrides the run's ``config.eval.roi``. The cascade takes its
    liver model from ``liver_workdir``, a liver-ResSeg run whose test cases
    must be this run's (so it never trained on them either). The postprocessing stored beside the scored
    model is applied as paresseg-predict applies it. The summary
    records its provenance (``evaluate.provenance``, the postprocessing included); with ``reuse`` a stored
    summary is returned as it is when all of it matches, else scored again.
    """
    plan = _plan(Path(workdir), liver_workdir, roi)
    out = Path(out_dir or workdir)
    previous = _current(plan, out) if reuse else None
    if previous is not None:
        return previous
    split, config = plan["split"], plan["config"]
    cases = cache_lib.open_cohort(plan["cache_dir"], split["test"])  # the cache training used
    roi_dilation = int(preprocess.resolve_config(config.data.preprocess)["roi_dilation"])
    records = score_cases(
        plan["tumor_model"], cases, config.eval.to_dict(), roi=plan["roi"], liver_model=plan["liver_model"],
        roi_dilation=roi_dilation, target=plan["target"], out_dir=out, overlays=overlays, title=title,
        postprocessing=plan["postprocessing"], fold=split["fold"],
    )
    split_info = {k: split[k] for k in ("fold", "num_folds", "train", "validation", "test")}
    write_summary(out, records, workdir=str(Path(workdir).absolute()), split=split_info,
                  liver_workdir=None if plan["liver_model"] is None else str(Path(liver_workdir).absolute()),
                  **plan["provenance"]["protocol"], **{provenance.KEY: plan["provenance"]}, **info)
    return read_summary(out)


def current_summary(
    workdir: str | os.PathLike,
    *,
    liver_workdir: str | os.PathLike | None = None,
    roi: str | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict | None:
    """The stored ``summary.json`` that :func:`score_run` with ``reuse`` would return as it is (its provenance is
    what scoring the run would use now), else None: a scheduler's check that a run needs no scoring."""
    return _current(_plan(Path(workdir), liver_workdir, roi), Path(out_dir or workdir))


def _current(plan: dict, out: Path) -> dict | None:
    """The summary in ``out`` if its provenance matches ``plan``'s, else None."""
    previous = provenance.stored(out)
    if previous is None or provenance.differences(previous["info"].get(provenance.KEY), plan["provenance"]):
        return None
    return previous


def _plan(workdir: Path, liver_workdir, roi: str | None) -> dict:
    """What scoring a run would use now: its config, split, models, cache and their provenance record."""
    config = read_config(workdir)
    if config is None:
        raise PareSegError("no config.json", path=workdir, fix="give a workdir written by paresseg-train")
    check_finished(workdir)
    config = ml_collections.ConfigDict(config)
    split = run_split(workdir)
    eval_config = config.eval.to_dict()
    target = config.data.target
    roi = roi or eval_config["roi"]
    checkpoint = eval_config["checkpoint"]
    liver_model, liver_sha256 = None, None
    if target == "tumor" and roi == CASCADE:
        liver_model = run_liver_model(workdir, split, liver_workdir)
        liver_checkpoint = read_config(liver_workdir)["eval"]["checkpoint"]
        liver_sha256 = provenance.model_checksum(Path(liver_workdir) / CHECKPOINT_CHOICES[liver_checkpoint], liver_model[1])
    tumor_model = load_run_model(workdir, checkpoint)
    chosen = stored_postprocessing(workdir / CHECKPOINT_CHOICES[checkpoint])
    cache_dir = prepared_cache(config)
    record = provenance.record(
        model_sha256=provenance.model_checksum(workdir / CHECKPOINT_CHOICES[checkpoint], tumor_model[1]),
        liver_model_sha256=liver_sha256, config=config.to_dict(), protocol=protocol(eval_config, roi, target),
        case_ids=split["test"], cache_dir=cache_dir, postprocessing=chosen,
    )
    return {"config": config, "split": split, "target": target, "roi": roi, "tumor_model": tumor_model,
            "liver_model": liver_model, "cache_dir": cache_dir, "postprocessing": chosen, "provenance": record}
