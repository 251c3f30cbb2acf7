"""Several models as one: their tumor (or liver) probabilities averaged, as nnU-Net ensembles its folds.

A model source is a saved model, a ``paresseg-train`` workdir, or a
cross-validation workdir, whose ``fold_*`` models all become members. Members
of one architecture share one compiled forward pass (the module is a static
argument of the jitted function and equal modules hash alike), so five folds
compile once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from paresseg_jax import absent_phases, model_io
from paresseg_jax.errors import MissingInputError
from paresseg_jax.infer.predict import VolumePlan, predict_volume, volume_plan

@dataclasses.dataclass(frozen=True)
class Ensemble:
    """``(module, variables)`` members whose probabilities are averaged; ``sources`` names each member's folder."""

    members: tuple[tuple, ...]
    sources: tuple[str, ...] = ()
    phase_dropout: float = 0.0  # the smallest any member was trained with (absent_phases): > 0 may go without ART

    @property
    def phases(self) -> tuple[str, ...]:
        """Every phase some member uses, PV first (each member reads its own)."""
        names = [p for module, _ in self.members for p in module.phases]
        return tuple(dict.fromkeys(["pv"] + names)) if "pv" in names else tuple(dict.fromkeys(names))

    def probability(
        self,
        images: Mapping[str, np.ndarray],
        roi: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
        plans: Sequence[VolumePlan] | None = None,
        slices: Sequence[int] | None = None,
        **predict_options,
    ) -> np.ndarray:
        """Mean of the members' :func:`predict_volume` probabilities (one volume held besides the sum); ``plans``:
        the members' :meth:`plans` for these images' shape and ``roi``, made ahead with these options;
        ``slices``: only these computed (:func:`predict_volume`)."""
        total = None
        for k, (module, variables) in enumerate(self.members):
            step = None if progress is None else _member_progress(progress, k, len(self.members))
            planned = {"plan": plans[k]} if plans is not None else predict_options
            prob = predict_volume(module, variables, images, roi, slices=slices, progress=step, **planned)
            total = prob if total is None else np.add(total, prob, out=total)
        return total / np.float32(len(self.members))


    def plans(self, shape: tuple[int, int, int], roi: np.ndarray | None = None,
              **predict_options) -> tuple[VolumePlan, ...]:
        """Each member's :func:`volume_plan` for a volume ``shape`` and ``roi``: compiled before its images exist."""
        return tuple(volume_plan(module, variables, shape, roi, **predict_options) for module, variables in self.members)


def as_ensemble(model) -> Ensemble:
    """An :class:`Ensemble` as it is, or one ``(module, variables)`` pair as an ensemble of one."""
    if isinstance(model, Ensemble):
        return model
    if isinstance(model, tuple) and len(model) >= 2 and hasattr(model[0], "phases"):
        return Ensemble((tuple(model[:2]),))
    raise TypeError(f"expected an Ensemble or a (module, variables) pair, got {type(model).__name__}")


def load_ensemble(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> Ensemble:
    """Load every model the sources stand for (see :func:`paresseg_jax.model_io.model_folders`), once."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources:
        raise MissingInputError("no model given", fix="pass at least one model (--model)")
    folders = [folder for source in sources for folder in model_io.model_folders(source)]
    loaded = [model_io.load_model(folder) for folder in folders]
    return Ensemble(tuple(m[:2] for m in loaded), tuple(str(f) for f in folders),
                    min(absent_phases.trained_phase_dropout(m[2]) for m in loaded))


def _member_progress(progress, member: int, count: int):
    """Slices done of member ``member`` reported as slices done of all ``count`` members."""
    return lambda done, total: progress(member * total + done, count * total)
