"""One fold of an experiment: the cascade's liver stage, the tumor runs trained on the same folds, their scores.

Cross-validation, the demo and the ablation all train and score through
these functions, so a fold is run one way: a training is skipped when its
workdir holds a finished run of the same config, resumed when stopped
(:func:`paresseg_jax.train.train_unless_finished`), and one stopped by a
signal stops the experiment before anything is scored; each tumor run is
scored by :func:`paresseg_jax.evaluate.scoring.score_run` through the
cascade of its fold's liver stage, a stored ``summary.json`` reused only when
its provenance matches. Experiments on a phantom cohort size their runs'
configs with :func:`scaled_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ml_collections

from paresseg_jax import config_files, train
from paresseg_jax.data.phantom_scale import COHORT_DIR, DemoScale
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.workdir import check_finished

LIVER_RUN = "liver"  # the cascade's liver-ResSeg: its run folder in the demo and the ablation


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training of a fold: its name (in progress lines), config, workdir and ``score_run`` options
    (``out_dir``, ``overlays``, ``title``, summary info such as ``run``)."""

    name: str
    config: ml_collections.ConfigDict
    workdir: Path
    scoring: Mapping = dataclasses.field(default_factory=dict)


def train_stage(stage: Stage) -> None:
    """Trains ``stage`` unless it is finished (a stopped one resumes); refuses (one line) to go on when a signal
    stopped it, since its model may not be scored."""
    result = train.train_unless_finished(stage.config, stage.workdir)
    if result is not None and result.get("stopped_by"):
        check_finished(stage.workdir)


def score_stage(stage: Stage, liver: Stage | None) -> dict:
    """``stage``'s model on its test cases through ``liver``'s cascade (None: a ROI that needs no liver model);
    its ``summary.json``, reused when its provenance matches."""
    return score_run(stage.workdir, liver_workdir=None if liver is None else liver.workdir, reuse=True, **stage.scoring)


def _untimed(name: str, work: Callable):
    return work()


def run_fold(liver: Stage | None, tumors: Sequence[Stage], timed: Callable = _untimed) -> dict[str, dict]:
    """Trains the liver stage (if any), then each tumor run, then scores each; returns the summaries by stage name.
    ``timed(name, work)`` runs each step (the demo times them)."""
    for stage in ([liver] if liver is not None else []) + list(tumors):
        timed(f"training {stage.name}", lambda stage=stage: train_stage(stage))
    return timed("cascade inference and scoring", lambda: {stage.name: score_stage(stage, liver) for stage in tumors})


def scaled_config(config: str, workdir: Path, scale: DemoScale, steps: int, seed: int = 0) -> ml_collections.ConfigDict:
    """An experiment config (built-in name or file path) resized to ``scale``, on the cohort in ``workdir``."""
    config = config_files.load(config)
    config.seed = seed
    config.model.width = scale.width
    config.data.cohort_dir = str(workdir / COHORT_DIR)
    config.data.cache_root = str(workdir / f"{COHORT_DIR}_cache")
    config.data.crop_size = scale.crop_size
    config.data.worker_count = scale.worker_count
    config.data.num_folds = scale.num_folds
    config.data.fold = 0
    config.train.batch_size = scale.batch_size
    config.train.num_steps = steps
    config.train.log_every = max(1, steps // 50)
    config.train.eval_every = max(1, steps // 4)
    config.train.checkpoint_every = config.train.eval_every
    config.eval.tile = scale.crop_size
    config.eval.stride = scale.crop_size // 2
    return config
