"""Validation during training: full slices of held-out cases, per-case and global Dice.

Each slice is predicted whole (the models pad to their size multiple and
crop back), thresholded inside the liver ROI and counted; the counts give each case's Dice and the pooled global Dice (DG),
the number the reference keeps its best checkpoint by. In a multi-process run
each process predicts every ``process_count``-th case and the counts are
gathered, so every process gets the same result.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from paresseg_jax.data.cache import CachedCase
from paresseg_jax.data.pipeline import eval_slices
from paresseg_jax.metrics import overlap_metrics


def _batches(items: list[dict], keys: Sequence[str], batch_size: int):
    """Fixed-size batches (the last one zero-padded) so the eval step compiles once per slice shape."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: np.stack([item[k] for item in chunk]) for k in keys}
        missing = batch_size - len(chunk)
        if missing:
            batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        yield len(chunk), batch


def case_counts(
    predict: Callable[[dict], jax.Array],
    case: CachedCase,
    phases: Sequence[str],
    in_channels: int,
    threshold: float,
    batch_size: int,
    target: str = "tumor",
) -> np.ndarray:
    """``[tp, fp, fn, tn]`` of one case: ``p > threshold`` inside the ROI vs the target's mask."""
    items = list(eval_slices(case, phases, in_channels, target))
    counts = np.zeros(4, np.int64)
    done = 0
    for used, batch in _batches(items, phases, batch_size):
        prob = np.asarray(predict(batch))[:used]
        chunk = items[done : done + used]
        done += used
        pred = (prob > threshold) & np.stack([item["roi"] > 0 for item in chunk])
        truth = np.stack([item["label"] > 0 for item in chunk])
        counts += [
            np.count_nonzero(pred & truth),
            np.count_nonzero(pred & ~truth),
            np.count_nonzero(~pred & truth),
            np.count_nonzero(~pred & ~truth),
        ]
    return counts


def validate(
    predict: Callable[[dict], jax.Array],
    cases: Sequence[CachedCase],
    phases: Sequence[str],
    in_channels: int,
    threshold: float,
    batch_size: int,
    target: str = "tumor",
) -> dict:
    """``{'global_dice', 'mean_dice', 'case_dice': {case_id: dice}}`` over ``cases`` (``target``: tumor or liver)."""
    counts = np.zeros((len(cases), 4), np.int64)
    index, count = jax.process_index(), jax.process_count()
    for i, case in enumerate(cases):
        if i % count == index:
            counts[i] = case_counts(predict, case, phases, in_channels, threshold, batch_size, target)
    if count > 1:
        counts = np.asarray(multihost_utils.process_allgather(counts)).astype(np.int64).sum(axis=0)
    case_dice = {case.case_id: overlap_metrics(*map(int, c))["dice"] for case, c in zip(cases, counts)}
    return {
        "global_dice": overlap_metrics(*map(int, counts.sum(axis=0)))["dice"],
        "mean_dice": float(np.mean(list(case_dice.values()))),
        "case_dice": case_dice,
    }
