"""Studies without some phase (often no usable ART): phase dropout in training, the absent input at inference.

What an absent phase looks like to a model: zeros, the whole 2.5D stack.
- It cannot be mistaken for a real scan: phases are windowed to
  [-70, 180] HU -> [0, 1], so a zero is -70 HU or below, which liver tissue
  never is (about 50-150 HU). Inside the ROI a real phase is never all zero,
  and outside it the tumor model's inputs are zero already: zeros say "no
  information here" throughout.
- It needs no parameter, so the architecture and its weights stay the
  reference's (they convert to PyTorch unchanged) and any saved model can be
  given the same input.
- A learned constant image would add nothing a convolution's bias cannot
  learn from zeros. PV in ART's place would say "this lesion does not
  enhance in the arterial phase", a finding (hypovascular lesions) rather
  than its absence, and would teach the model to believe it.

Training with ``config.train.phase_dropout = p`` replaces each non-PV phase
of each training patch by zeros with probability p (independently per
phase; PV, the target phase, is always kept). The saved model's spec records
p (``SPEC_KEY``), and inference runs a model without a phase only if p > 0.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from paresseg_jax.errors import BadInputError

SPEC_KEY = "phase_dropout"
"""Key of a saved model's spec (``model.json``) recording the phase-dropout probability it was trained with."""


def check_probability(probability: float) -> float:
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"config.train.phase_dropout={probability} must lie in [0, 1) (0 turns it off)")
    return float(probability)


def drop_phases(patch: dict, phases: Sequence[str], probability: float, rng: np.random.Generator) -> dict:
    """Training augmentation: each non-PV phase of ``patch`` replaced by zeros with ``probability``."""
    for phase in phases:
        if phase != "pv" and rng.random() < probability:
            patch[phase] = np.zeros_like(patch[phase])
    return patch


def trained_phase_dropout(spec: Mapping) -> float:
    """The phase-dropout probability a saved model was trained with (0 when its spec does not say)."""
    return float(spec.get(SPEC_KEY) or 0.0)


def missing_phases(
    given: Iterable[str],
    phases: Sequence[str],
    spec: Mapping,
    model: str | os.PathLike | None = None,
    flag: Callable[[str], str] = lambda phase: f"--{phase}",
) -> list[str]:
    """The model's ``phases`` a study lacks (not in ``given``), if the model can run without them.
    ``flag`` names the option that gives a phase, for the error.

    Refuses (``BadInputError``, a ``PareSegError``) a study without PV, and missing phases for a
    model trained without phase dropout: it never saw the absent input and
    would segment it unpredictably.
    """
    given = set(given)
    if "pv" not in given:
        raise BadInputError("a study needs its PV image: PV is the phase the model segments", path=model,
                            fix="give it with --pv")
    missing = [p for p in phases if p not in given]
    if missing and trained_phase_dropout(spec) <= 0:
        flags = ", ".join(flag(p) for p in missing)
        raise BadInputError(
            f"the model uses phases {tuple(phases)} and was trained without phase dropout, so it cannot run "
            f"without {', '.join(missing)}",
            path=model,
            fix=f"give the missing image(s) with {flags}, or use a model trained with config.train.phase_dropout > 0",
        )
    return missing


def fill_absent(images: Mapping[str, np.ndarray], phases: Sequence[str]) -> dict[str, np.ndarray]:
    """``images`` (windowed, PV included) completed to every one of ``phases``: a missing one is zeros like PV.
    Check with :func:`missing_phases` first that the model may run so."""
    return {p: images[p] if p in images else np.zeros_like(images["pv"]) for p in phases}
