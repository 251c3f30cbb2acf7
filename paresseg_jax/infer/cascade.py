"""The paper's two-stage cascade: liver model -> dilated liver ROI -> tumor model inside it.

A single-branch ResSeg trained on PV (``configs/liver_resseg.py``) predicts
the liver; its mask dilated 5 x 5 per slice is the ROI. The tumor model sees
only the ROI (voxels outside are 0, as in training) and tumor voxels outside
it are removed.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from paresseg_jax.data.preprocess import liver_roi
from paresseg_jax.infer.predict import predict_volume

PREDICT_OPTIONS = ("mode", "tile", "stride", "weighting", "batch_size", "tta", "pad_multiple", "crop_to_roi",
                   "roi_margin")


def options_from_config(eval_config: Mapping) -> dict:
    """Keyword arguments of :func:`segment_study` from a config's ``eval`` section."""
    keys = PREDICT_OPTIONS + ("threshold", "liver_threshold")
    return {k: eval_config[k] for k in keys if k in eval_config}


def segment_study(
    images: Mapping[str, np.ndarray],
    tumor_model: tuple,
    *,
    liver_model: tuple | None = None,
    liver: np.ndarray | None = None,
    threshold: float = 0.6,
    liver_threshold: float = 0.5,
    roi_dilation: int = 5,
    **predict_options,
) -> dict:
    """Tumor segmentation of one windowed study (phase -> ``(z, y, x)`` in [0, 1], PV grid).

    ``tumor_model`` and ``liver_model`` are ``(module, variables)`` pairs.
    The ROI comes from a given ``liver`` mask if any, else from the liver
    model's prediction (probability > ``liver_threshold``), else there is no
    ROI and the whole volume is segmented. ``predict_options`` go to
    :func:`predict_volume` for both models (mode, tile, stride, tta, ...).

    Returns ``prob`` (float32 tumor probability), ``mask`` (uint8, prob >
    ``threshold``), ``liver`` and ``roi`` (uint8, or None without a ROI).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold} must lie in [0, 1) (config.eval.threshold; the reference uses 0.6)")
    if liver is None and liver_model is not None:
        module, variables = liver_model
        if tuple(module.phases) != ("pv",):
            raise ValueError(f"the liver model must be a single-phase PV model (phases ('pv',)), not {tuple(module.phases)}")
        liver_prob = predict_volume(module, variables, {"pv": images["pv"]}, **predict_options)
        liver = (liver_prob > liver_threshold).astype(np.uint8)
    if liver is not None and np.shape(liver) != np.shape(images["pv"]):
        raise ValueError(f"the liver mask has shape {np.shape(liver)} but the PV image {np.shape(images['pv'])}")
    roi = None if liver is None else liver_roi(liver, roi_dilation)
    module, variables = tumor_model
    prob = predict_volume(module, variables, images, roi, **predict_options)
    return {
        "prob": prob,
        "mask": (prob > threshold).astype(np.uint8),
        "liver": None if liver is None else (np.asarray(liver) > 0).astype(np.uint8),
        "roi": roi,
    }
