"""The paper's two-stage cascade: liver model -> dilated liver ROI -> tumor model inside it.

A single-branch ResSeg trained on PV (``configs/liver_resseg.py``) predicts
the liver; its mask dilated 5 x 5 per slice is the ROI. The tumor model sees
only the ROI (voxels outside are 0, as in training) and tumor voxels outside
it are removed. Either model may be an ensemble (``paresseg_jax.infer.ensemble``).
The result's label map follows LiTS: 0 background, 1 liver, 2 tumor.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from paresseg_jax import model_io, postprocess, stage_times
from paresseg_jax.config_defaults import LIVER_SLICE_STEP
from paresseg_jax.data.preprocess import liver_roi
from paresseg_jax.infer.ensemble import Ensemble, as_ensemble
from paresseg_jax.infer.liver_stage import liver_mask, stage_options
from paresseg_jax.infer.predict import binarize

LIVER_LABEL, TUMOR_LABEL = 1, 2  # LiTS label map
PREDICT_OPTIONS = ("mode", "tile", "stride", "weighting", "batch_size", "batch_pixels", "conv_impl", "tta",
                   "pad_multiple", "crop_to_roi", "roi_margin")


def predict_options(eval_config: Mapping) -> dict:
    """Keyword arguments of :func:`predict_volume` from a config's ``eval`` section."""
    return {k: eval_config[k] for k in PREDICT_OPTIONS if k in eval_config}


def threshold_for(eval_config: Mapping, target: str) -> float:
    """The probability a target's voxel needs: ``threshold`` for tumor, ``liver_threshold`` for the liver stage."""
    return float(eval_config.get("liver_threshold", 0.5) if target == "liver" else eval_config.get("threshold", 0.6))


def segment_options(eval_config: Mapping) -> dict:
    """Keyword arguments of :func:`segment_study` from a config's ``eval`` section: both stages' thresholds
    (:func:`threshold_for`), the liver stage's settings and the :func:`predict_options`."""
    thresholds = {"threshold": threshold_for(eval_config, "tumor"), "liver_threshold": threshold_for(eval_config, "liver")}
    return {**predict_options(eval_config), **stage_options(eval_config), **thresholds}


def label_map(liver: np.ndarray | None, tumor: np.ndarray) -> np.ndarray:
    """LiTS labels (uint8): tumor 2 wherever ``tumor``, else liver 1 wherever ``liver``, else 0."""
    labels = np.zeros(np.shape(tumor), np.uint8)
    if liver is not None:
        labels[np.asarray(liver) > 0] = LIVER_LABEL
    labels[np.asarray(tumor) > 0] = TUMOR_LABEL
    return labels


def stored_postprocessing(model_path) -> dict | None:
    """The postprocessing ``paresseg-postprocess`` stored beside a saved model (or a training workdir's
    scored one), None for none: read here for prediction and scoring alike, so both apply the same choice."""
    return postprocess.read(model_io.resolve_model_dir(model_path))


def postprocessed(result: dict, spacing_zyx, settings: Mapping | None, liver_predicted: bool) -> dict:
    """A :func:`segment_study` result after ``settings`` (``paresseg_jax.postprocess``; None: the result as
    it is): the one step by which paresseg-predict and scoring turn masks into what they report. Liver
    steps change only a liver that ``liver_predicted`` (never a given mask)."""
    if not settings:
        return result
    liver, mask = postprocess.apply(result["liver"], result["mask"], spacing_zyx, settings,
                                    liver_predicted=liver_predicted)
    return {**result, "liver": liver, "mask": mask, "labels": label_map(liver, mask)}


def predicted_liver(pv: np.ndarray, liver_model: tuple | Ensemble, liver_threshold: float = 0.5,
                    progress: Callable[[int, int], None] | None = None, plans=None,
                    liver_slice_step: int = LIVER_SLICE_STEP, liver_scale: int = 1, **predict_options) -> np.ndarray:
    """The cascade's first stage: the liver model's mask (uint8, probability >= ``liver_threshold``) of a
    windowed PV volume, on the slices ``liver_slice_step`` and ``liver_scale`` leave to compute
    (:mod:`paresseg_jax.infer.liver_stage`); ``predict_options`` go to :func:`predict_volume` (``plans``:
    ``Ensemble.plans`` made ahead with them for :func:`liver_stage.model_shape`)."""
    liver_model = as_ensemble(liver_model)
    if liver_model.phases != ("pv",):
        raise ValueError(f"the liver model must be a single-phase PV model (phases ('pv',)), not {liver_model.phases}")
    with stage_times.stage("liver"):
        return liver_mask(liver_model, pv, liver_threshold, liver_slice_step=liver_slice_step, liver_scale=liver_scale,
                          progress=progress, plans=plans, **predict_options)


def segment_study(
    images: Mapping[str, np.ndarray],
    tumor_model: tuple | Ensemble,
    *,
    liver_model: tuple | Ensemble | None = None,
    liver: np.ndarray | None = None,
    threshold: float = 0.6,
    liver_threshold: float = 0.5,
    roi_dilation: int = 5,
    liver_slice_step: int = LIVER_SLICE_STEP,
    liver_scale: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    tumor_plans=None,
    **predict_options,
) -> dict:
    """Tumor segmentation of one windowed study (phase -> ``(z, y, x)`` in [0, 1], PV grid).

    ``tumor_model`` and ``liver_model`` are ``(module, variables)`` pairs or
    ensembles (probabilities averaged). The ROI comes from a given ``liver``
    mask if any, else from the liver model's prediction (probability >=
    ``liver_threshold``; ``liver_slice_step`` and ``liver_scale`` make it
    cheaper: :mod:`paresseg_jax.infer.liver_stage`), else there is no ROI and
    the whole volume is segmented. ``predict_options`` go to :func:`predict_volume`
    for both models (mode, tile, stride, tta, ...); ``tumor_plans``: the tumor
    model's ``Ensemble.plans`` for this ROI, made ahead with them;
    ``progress(stage, done, total)`` hears of every batch, stage 'liver' or 'tumor'.

    Returns ``prob`` (float32 tumor probability), ``mask`` (uint8, prob >=
    ``threshold``), ``liver`` and ``roi`` (uint8, or None without a ROI) and
    ``labels`` (:func:`label_map` of liver and mask).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must lie in (0, 1] (config.eval.threshold; the reference uses 0.6)")

    def stage(name):
        return None if progress is None else (lambda done, total: progress(name, done, total))

    if liver is None and liver_model is not None:
        liver = predicted_liver(images["pv"], liver_model, liver_threshold, stage("liver"),
                                liver_slice_step=liver_slice_step, liver_scale=liver_scale, **predict_options)
    if liver is not None and np.shape(liver) != np.shape(images["pv"]):
        raise ValueError(f"the liver mask has shape {np.shape(liver)} but the PV image {np.shape(images['pv'])}")
    with stage_times.stage("tumor"):
        roi = None if liver is None else liver_roi(liver, roi_dilation)
        prob = as_ensemble(tumor_model).probability(images, roi, progress=stage("tumor"), plans=tumor_plans,
                                                    **predict_options)
        mask = binarize(prob, threshold)
        liver = None if liver is None else (np.asarray(liver) > 0).astype(np.uint8)
        labels = label_map(liver, mask)
    return {"prob": prob, "mask": mask, "liver": liver, "roi": roi, "labels": labels}
