"""The paper's k-fold cross-validation (``paresseg-evaluate --config``).

Protocol (paper, Sec. 4): folds stratified by tumor type
(``paresseg_jax.data.splits``, ``config.data.num_folds``, 5 by default); fold
k trains on the other folds (``paresseg-train`` with ``config.data.fold = k``,
in ``<workdir>/fold_k``; validation, if any, carved from those folds) and
segments the fold's held-out cases through the paper's cascade: a
liver-ResSeg trained on the same folds (``<liver_workdir>/fold_k``, by
default ``<workdir>/liver/fold_k``) predicts each case's liver, whose 5x5
dilation is the tumor model's ROI. Each fold is run by
:func:`paresseg_jax.experiments.folds.run_fold` (finished trainings and
scores with matching provenance reused, stopped trainings resumed); the
per-case records of all folds go into ``<workdir>/summary.json``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import ml_collections

from paresseg_jax import config_defaults
from paresseg_jax.evaluate.scoring import CASCADE, protocol
from paresseg_jax.summary import read_summary, write_summary
from paresseg_jax.experiments.folds import LIVER_RUN, Stage, run_fold


def cross_validate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    folds: Sequence[int] | None = None,
    overlays: bool = False,
    liver_workdir: str | os.PathLike | None = None,
) -> dict:
    """Train and score every fold (or the given ones); returns the ``summary.json`` content of ``workdir``.

    With ``config.eval.roi`` 'cascade' (the default) each fold's liver-ResSeg
    is trained too (``config_defaults.liver_stage``: ResSeg, cross-entropy, liver target) in ``liver_workdir/fold_k``
    unless it is there already, so several tumor experiments can share one.
    """
    workdir = Path(workdir)
    num_folds = int(config.data.num_folds)
    folds = list(range(num_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{num_folds - 1} (config.data.num_folds={num_folds})")
    roi, target = config.eval.roi, config.data.target
    liver_root = Path(liver_workdir) if liver_workdir is not None else workdir / LIVER_RUN
    records = []
    for fold in folds:
        fold_config = copy.deepcopy(config)
        fold_config.data.fold = fold
        tumor = Stage("tumor", fold_config, workdir / f"fold_{fold}", {"overlays": overlays, "title": f"fold {fold}"})
        liver = None
        if target == "tumor" and roi == CASCADE:
            liver = Stage(LIVER_RUN, config_defaults.liver_stage(fold_config), liver_root / f"fold_{fold}")
        records += run_fold(liver, [tumor])["tumor"]["cases"]
    write_summary(workdir, records, folds=folds, num_folds=num_folds, config=config.to_dict(),
                  **protocol(config.eval.to_dict(), roi, target))
    return read_summary(workdir)
