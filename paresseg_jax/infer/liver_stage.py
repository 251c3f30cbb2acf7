"""The cascade's liver stage, cheaper than the liver model on every whole slice.

With no liver mask given, the liver-ResSeg finds the liver before the tumor
model runs. Its cost on every slice at full resolution rivals the tumor
stage's (it runs on every slice, the tumor model only on the liver's), so two
settings (``config.eval``) cut it:

- ``liver_slice_step`` k: a coarse pass computes every k-th slice (and the
  last); then only the slices between the sampled slices without liver that
  bracket each sampled slice with liver are computed (:func:`slices_in_range`).
  A liver block is thus covered whole, from one liver-free sample to the next;
  what the model would find only in a block shorter than k slices lying between
  two liver-free samples is missed. k = 1 computes every slice, as before.
- ``liver_scale`` s: the model sees PV shrunk s times in-plane (linear, with
  antialiasing) and its probability is resized back (linear) before the
  threshold: s^2 fewer FLOPs per slice. s = 1 is full resolution.

Each slice the stage computes sees the same 2.5D stack as at k = 1, so at
s = 1 its probability is the full stage's (tested).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from paresseg_jax.infer.ensemble import Ensemble
from paresseg_jax.infer.predict import binarize

OPTIONS = ("liver_slice_step", "liver_scale")


def sampled_slices(depth: int, step: int) -> np.ndarray:
    """The coarse pass's slices: every ``step``-th from the first, and the last."""
    if step < 1:
        raise ValueError(f"liver_slice_step={step} must be >= 1 (config.eval.liver_slice_step; 1: every slice)")
    return np.unique(np.r_[np.arange(0, depth, step), depth - 1])


def slices_in_range(depth: int, sampled: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The slices strictly between the sampled slices that bracket each sampled slice where liver was ``found``
    (the volume's ends where no sample brackets it), sorted; ``found[i]`` is whether ``sampled[i]`` holds liver."""
    covered = np.zeros(depth, bool)
    for i in np.flatnonzero(found):
        low = sampled[i - 1] + 1 if i > 0 else 0
        high = sampled[i + 1] if i + 1 < len(sampled) else depth
        covered[low:high] = True
    return np.flatnonzero(covered)


def resized(volume: np.ndarray, height: int, width: int) -> np.ndarray:
    """``volume`` ``(z, y, x)`` resized in-plane to ``height`` x ``width`` (linear, antialiased when shrinking)."""
    shape = (volume.shape[0], height, width)
    return np.asarray(jax.image.resize(np.asarray(volume, np.float32), shape, "linear", antialias=True))


def model_shape(shape: tuple[int, int, int], liver_scale: int) -> tuple[int, int, int]:
    """The ``(z, y, x)`` shape the liver model sees for a PV volume of ``shape`` at ``liver_scale``."""
    if liver_scale < 1:
        raise ValueError(f"liver_scale={liver_scale} must be >= 1 (config.eval.liver_scale; 1: full resolution)")
    depth, height, width = shape
    return depth, -(-height // liver_scale), -(-width // liver_scale)


def liver_mask(model: Ensemble, pv: np.ndarray, threshold: float, *, liver_slice_step: int = 1, liver_scale: int = 1,
               progress: Callable[[int, int], None] | None = None, plans=None, **predict_options) -> np.ndarray:
    """The liver (uint8, PV's shape) where ``model``'s probability >= ``threshold`` on the slices the coarse
    pass and the range computed (module docstring), 0 on the others; ``predict_options`` (or ``plans`` made
    with them for :func:`model_shape`) go to every pass."""
    depth, height, width = np.shape(pv)
    seen = model_shape(np.shape(pv), liver_scale)
    small = {"pv": resized(pv, *seen[1:]) if liver_scale > 1 else pv}

    def probability(slices: np.ndarray) -> np.ndarray:  # of ``slices`` only, at PV's size
        prob = model.probability(small, slices=slices, progress=progress, plans=plans, **predict_options)[slices]
        return resized(prob, height, width) if liver_scale > 1 else prob

    mask = np.zeros((depth, height, width), np.uint8)
    sampled = sampled_slices(depth, liver_slice_step)
    mask[sampled] = binarize(probability(sampled), threshold)
    rest = np.setdiff1d(slices_in_range(depth, sampled, mask[sampled].any(axis=(1, 2))), sampled)
    if len(rest):
        mask[rest] = binarize(probability(rest), threshold)
    return mask


def stage_options(eval_config: Mapping) -> dict:
    """The liver stage's settings from a config's ``eval`` section (those it sets)."""
    return {k: int(eval_config[k]) for k in OPTIONS if k in eval_config}
