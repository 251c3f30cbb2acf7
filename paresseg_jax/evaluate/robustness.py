"""A trained model on its held-out cases with ART misaligned by known millimetres, or without ART.

The paper measures how PA-ResSeg's accuracy depends on registration (Fig. 11);
clinical studies also lack a usable arterial phase. Both are scored here on
views of the cached cases that differ from them in one phase only:
- misaligned: the phase (ART by default) displaced by a rigid shift of
  ``m`` mm in a direction fixed per case, or by a smooth deformation whose
  largest displacement is ``m`` mm (``data.misregistration.misalign``);
  the direction and the deformation's pattern depend on the seed and the
  case, not on ``m``, so a curve over ``m`` grows one perturbation;
- absent: the phase replaced by the absent-phase input, allowed only for
  models trained with phase dropout (``paresseg_jax.absent_phases``).
Every condition is scored by ``evaluate.scoring.score_cases`` into its own
``summary.json`` under ``<workdir>/perturbed/<condition>/``, so
``paresseg-evaluate --run`` compares conditions with its paired tests.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from paresseg_jax import absent_phases, model_io
from paresseg_jax.data import misregistration
from paresseg_jax.data.cache import CachedCase, open_cohort
from paresseg_jax.errors import BadInputError, MissingInputError
from paresseg_jax.evaluate import scoring
from paresseg_jax.summary import write_summary
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import CHECKPOINT_CHOICES, CONFIG_FILE, PERTURBED_DIR, check_finished, read_config

KINDS = ("shift", "deformation")


class PerturbedCase:
    """A cached case whose ``image(phase)`` is replaced for some phases (computed on first use)."""

    def __init__(self, case: CachedCase, images: Mapping[str, Callable[[], np.ndarray]]):
        self._case, self._make, self._made = case, dict(images), {}

    def image(self, phase: str) -> np.ndarray:
        if phase not in self._make:
            return self._case.image(phase)
        if phase not in self._made:
            self._made[phase] = self._make[phase]()
        return self._made[phase]

    def __getattr__(self, name):
        return getattr(self._case, name)


def _case_seed(case: CachedCase, seed: int) -> int:
    return zlib.crc32(case.case_id.encode()) ^ int(seed)


def misaligned(case: CachedCase, kind: str, magnitude_mm: float, phase: str = "art", seed: int = 0) -> PerturbedCase:
    """``case`` with ``phase`` shifted ``magnitude_mm`` in a random direction (``kind='shift'``) or deformed by up to
    ``magnitude_mm`` (``'deformation'``); direction and pattern are drawn from ``seed`` and the case id."""
    if kind not in KINDS:
        raise ValueError(f"misalignment kind {kind!r} is unknown; choose from {KINDS}")
    spacing_zyx = case.spacing_zyx
    case_seed = _case_seed(case, seed)

    def make():
        volume = np.asarray(case.image(phase))
        if kind == "deformation":
            return misregistration.misalign(volume, spacing_zyx, deformation_mm=magnitude_mm, seed=case_seed)
        direction = np.random.default_rng(case_seed).standard_normal(3)
        return misregistration.misalign(volume, spacing_zyx, shift_mm=magnitude_mm * direction / np.linalg.norm(direction))

    return PerturbedCase(case, {phase: make})


def without(case: CachedCase, phases: Sequence[str]) -> PerturbedCase:
    """``case`` with ``phases`` given as absent (check the model with ``absent_phases.missing_phases`` first)."""
    return PerturbedCase(case, {p: lambda: np.zeros(case.shape, np.float32) for p in phases})


def condition_name(kind: str, magnitude_mm: float) -> str:
    """A misalignment's folder under ``perturbed/``: ``shift_4mm``, ``deformation_10mm``, ``none`` at 0 mm."""
    return f"{kind}_{magnitude_mm:g}mm" if magnitude_mm > 0 else "none"


def absent_name(phases: Sequence[str]) -> str:
    """The folder under ``perturbed/`` of the scores with ``phases`` absent: ``without_art``."""
    return "without_" + "_".join(phases)


def _conditions(cases: Sequence[CachedCase], magnitudes_mm: Sequence[float], kinds: Sequence[str],
                absent: Sequence[str], phase: str, seed: int) -> dict[str, tuple[list, dict]]:
    """Each condition's ``(case views, summary info)`` by folder name: ``phase`` misaligned by each magnitude in
    each kind (``none`` at 0 mm), then the ``absent`` phases left out."""
    conditions = {}
    for magnitude in sorted({float(m) for m in magnitudes_mm}):
        for kind in kinds if magnitude > 0 else ("none",):
            views = cases if magnitude == 0 else [misaligned(c, kind, magnitude, phase, seed) for c in cases]
            conditions[condition_name(kind, magnitude)] = (views, {"misalignment": kind, "misalignment_mm": magnitude,
                                                                   "phase": phase})
    if absent:
        conditions[absent_name(absent)] = ([without(c, absent) for c in cases], {"absent": list(absent)})
    return conditions


def evaluate_perturbed(
    workdir: str | os.PathLike,
    magnitudes_mm: Sequence[float] = (0, 2, 4, 6, 8, 10),
    kinds: Sequence[str] = KINDS,
    absent: Sequence[str] = (),
    phase: str = "art",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    prefix: str = "",
    liver_workdir: str | os.PathLike | None = None,
    roi: str | None = None,
) -> dict[str, float]:
    """Score a ``paresseg-train`` workdir's model on its held-out cases under each condition: ``phase`` misaligned
    by each of ``magnitudes_mm`` in each of ``kinds``, then (if given) with the ``absent`` phases left out.

    With ``cache_dir`` the same held-out cases are read from that cache instead of the run's: the cohort
    preprocessed otherwise, e.g. registered rigidly only (``registration.bspline_iterations = 0``) or not
    at all (``register = False``). Writes ``<workdir>/perturbed/<prefix><condition>/summary.json``
    (conditions ``shift_4mm``, ``deformation_4mm``, ..., ``none`` for 0 mm, ``without_art``) and returns
    each condition's mean Dice (DPC).
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise BadInputError(f"misalignment kinds {unknown} are unknown", fix=f"choose from {KINDS} (--kinds)")
    workdir = Path(workdir)
    saved = read_config(workdir)
    if saved is None:
        raise MissingInputError(f"has no {CONFIG_FILE}", path=workdir, fix="give a workdir written by paresseg-train")
    check_finished(workdir)
    config = ml_collections.ConfigDict(saved)
    eval_config = config.eval.to_dict()
    checkpoint = eval_config["checkpoint"]
    scoring.load_run_model(workdir, checkpoint)  # checks the choice
    module, variables, spec = model_io.load_model(workdir / CHECKPOINT_CHOICES[checkpoint])
    if phase not in module.phases or phase == "pv":
        raise BadInputError(f"the model's phases are {module.phases}, so it cannot misalign {phase!r}", path=workdir,
                            fix="misalign one of the model's phases other than PV (--phase)")
    chosen = scoring.stored_postprocessing(workdir / CHECKPOINT_CHOICES[checkpoint])  # applied as score_run does
    split = scoring.run_split(workdir)
    cache = Path(cache_dir) if cache_dir is not None else prepared_cache(config)
    cases = open_cohort(cache, split["test"])
    target = config.data.target
    roi = roi or eval_config["roi"]
    liver_model = scoring.run_liver_model(workdir, split, liver_workdir) if target == "tumor" and roi == scoring.CASCADE else None
    if absent:
        absent_phases.missing_phases(set(module.phases) - set(absent), module.phases, spec, workdir)
    conditions = _conditions(cases, magnitudes_mm, kinds, absent, phase, seed)
    dpc = {}
    source = {"cache_dir": str(cache)}
    liver_masks = {}  # every condition keeps PV: the liver stage runs once per case
    for name, (views, info) in conditions.items():
        name = prefix + name
        records = scoring.score_cases((module, variables), views, eval_config, roi=roi, liver_model=liver_model,
                                      liver_masks=liver_masks, target=target, postprocessing=chosen, condition=name,
                                      fold=split["fold"], **info)
        write_summary(workdir / PERTURBED_DIR / name, records, workdir=str(workdir), seed=seed, **source, **info,
                      postprocessing=chosen, **scoring.protocol(eval_config, roi, target))
        dpc[name] = float(np.mean([r["metrics"]["dice"] for r in records]))
    return dpc
