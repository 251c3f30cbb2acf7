"""Postprocessing of the cascade's masks, and its choice on validation cases (never on test cases).

The steps of nnU-Net, TotalSegmentator and MONAI (``KeepLargestConnectedComponent``,
``FillHoles``, ``RemoveSmallObjects``), each off unless validation shows it helps:

- ``liver_largest_component``: keep the liver's largest 26-connected component;
- ``liver_fill_holes``: fill the liver's enclosed holes (3D), where tumors often sit;
- ``tumor_inside_liver``: remove tumor lesions that touch no liver voxel;
- ``tumor_min_ml``: remove tumor lesions under this volume (ml; 0 = off).

Liver steps apply only to a liver the liver model predicted, never to a mask
the user gave. :func:`choose` turns steps on one at a time, in that order,
keeping a step only when it raises the validation cases' mean Dice (liver
Dice for liver steps, tumor Dice, the paper's DPC, for tumor steps), as
nnU-Net's ``determine_postprocessing`` does; ``tumor_min_ml`` takes the best
of ``MIN_ML_CANDIDATES``. The choice is stored beside the model
(:func:`write`, ``postprocessing.json``) and applied by prediction and scoring alike
(``infer.cascade.postprocessed``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from paresseg_jax.atomic import write_text
from paresseg_jax.errors import BadInputError, read_json
from paresseg_jax.lesions import CONNECTIVITY, components
from paresseg_jax.metrics import dice

FILE = "postprocessing.json"
NONE = {"liver_largest_component": False, "liver_fill_holes": False, "tumor_inside_liver": False,
        "tumor_min_ml": 0.0}
MIN_ML_CANDIDATES = (0.1, 0.2, 0.5, 1.0)  # TotalSegmentator drops blobs under 0.2 ml


def apply(liver: np.ndarray | None, tumor: np.ndarray, spacing_zyx: Sequence[float], settings: Mapping,
          liver_predicted: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """``(liver, tumor)`` uint8 after the steps ``settings`` turns on (missing keys: off)."""
    settings = {**NONE, **settings}
    if liver is not None:
        liver = np.asarray(liver) > 0
        if liver_predicted and settings["liver_largest_component"] and liver.any():
            liver = components(liver)[0] == 1
        if liver_predicted and settings["liver_fill_holes"]:
            liver = ndimage.binary_fill_holes(liver)
        liver = liver.astype(np.uint8)
    labels, count = components(tumor)
    keep = np.ones(count + 1, bool)
    keep[0] = False
    if settings["tumor_inside_liver"] and liver is not None:
        touching = ndimage.binary_dilation(liver > 0, structure=CONNECTIVITY)  # in the liver or beside it
        keep[1:] = np.bincount(labels[touching], minlength=count + 1)[1:] > 0
    if settings["tumor_min_ml"] > 0:
        voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
        keep[1:] &= np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_ml >= settings["tumor_min_ml"]
    return liver, keep[labels].astype(np.uint8)


def _mean_dice(cases: Sequence[Mapping], settings: Mapping, organ: str) -> float:
    dices = []
    for case in cases:
        liver, tumor = apply(case["liver"], case["tumor"], case["spacing_zyx"], settings)
        pred, truth = (liver, case["liver_gt"]) if organ == "liver" else (tumor, case["tumor_gt"])
        dices.append(dice(pred, truth))
    return float(np.mean(dices))


def choose(cases: Sequence[Mapping]) -> dict:
    """The steps that help on validation ``cases`` (each: predicted ``liver`` or None, ``tumor``, ``liver_gt``,
    ``tumor_gt``, ``spacing_zyx``): ``{"settings", "validation": mean Dice before and after, cases}``."""
    if not cases:
        raise BadInputError("no validation cases to choose postprocessing on",
                            fix="train with validation cases (config.data.val_fraction > 0)")
    settings = dict(NONE)
    livers = all(case["liver"] is not None for case in cases)
    trials = ([("liver", {"liver_largest_component": True}), ("liver", {"liver_fill_holes": True})] if livers else [])
    trials += [("tumor", {"tumor_inside_liver": True})] if livers else []
    trials += [("tumor", {"tumor_min_ml": ml}) for ml in MIN_ML_CANDIDATES]
    before = {organ: _mean_dice(cases, NONE, organ) for organ in (("liver", "tumor") if livers else ("tumor",))}
    for organ, change in trials:
        if _mean_dice(cases, {**settings, **change}, organ) > _mean_dice(cases, settings, organ):
            settings.update(change)
    after = {organ: _mean_dice(cases, settings, organ) for organ in before}
    return {"settings": settings, "validation": {"cases": len(cases), "mean_dice_before": before,
                                                 "mean_dice_after": after}}


def write(model_dir: str | os.PathLike, choice: Mapping, **provenance) -> Path:
    """Store a choice beside a saved model (``<model_dir>/postprocessing.json``), whole or not at all."""
    return write_text(Path(model_dir) / FILE, json.dumps({**choice, **provenance}, indent=1))


def read(model_dir: str | os.PathLike) -> dict | None:
    """The settings stored beside a saved model, or None when nothing was chosen for it."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    content = read_json(path, fix="choose again with paresseg-postprocess, or delete the file")
    settings = content.get("settings") if isinstance(content, dict) else None
    if not isinstance(settings, dict) or set(settings) - set(NONE):
        raise BadInputError(f"holds no postprocessing settings of {sorted(NONE)}", path=path,
                            fix="choose again with paresseg-postprocess, or delete the file")
    return {**NONE, **settings}
