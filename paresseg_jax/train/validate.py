"""Validation during training: the validation cases segmented as final inference segments them.

Each case goes through :func:`paresseg_jax.infer.predict_volume` with the
run's ``config.eval`` settings (mode, extent, batch) and the same
``p >= threshold`` rule, so what validation measured is what evaluation will
compute; only the ROI differs: validation cases are gated by their own
(ground-truth) liver ROI from the cache, since the cascade's liver model is
trained separately. The counts give each case's Dice and the pooled global
Dice (DG), the number ``best_model`` is chosen by. In a multi-process run
each process predicts every ``process_count``-th case and the counts are
gathered, so every process gets the same result.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from paresseg_jax.data.cache import CachedCase
from paresseg_jax.infer.cascade import predict_options, threshold_for
from paresseg_jax.infer.predict import binarize, predict_volume
from paresseg_jax.metrics import confusion_counts, overlap_metrics


def case_counts(module, variables, case: CachedCase, eval_config: Mapping, target: str = "tumor") -> np.ndarray:
    """``[tp, fp, fn, tn]`` of one case: the target's predicted mask (tumor: inside the ROI) vs its mask."""
    images = {p: case.image(p) for p in module.phases}
    roi, truth = (case.roi, case.tumor) if target == "tumor" else (None, case.liver)
    prob = predict_volume(module, variables, images, roi, **predict_options(eval_config))
    return np.array(confusion_counts(binarize(prob, threshold_for(eval_config, target)), truth), np.int64)


def validate(module, variables, cases: Sequence[CachedCase], eval_config: Mapping, target: str = "tumor") -> dict:
    """``{'global_dice', 'mean_dice', 'case_dice': {case_id: dice}}`` over ``cases`` (``target``: tumor or liver)."""
    counts = np.zeros((len(cases), 4), np.int64)
    index, count = jax.process_index(), jax.process_count()
    for i, case in enumerate(cases):
        if i % count == index:
            counts[i] = case_counts(module, variables, case, eval_config, target)
    if count > 1:
        counts = np.asarray(multihost_utils.process_allgather(counts)).astype(np.int64).sum(axis=0)
    case_dice = {case.case_id: overlap_metrics(*map(int, c))["dice"] for case, c in zip(cases, counts)}
    return {
        "global_dice": overlap_metrics(*map(int, counts.sum(axis=0)))["dice"],
        "mean_dice": float(np.mean(list(case_dice.values()))),
        "case_dice": case_dice,
    }
