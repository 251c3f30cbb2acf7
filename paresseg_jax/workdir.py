"""The layout of a training workdir: its file and folder names and their readers.

Training writes this layout; inference, evaluation and the reports read it.
It sits below all three so that none of them imports another for a file name.
"""

from __future__ import annotations

import json
from pathlib import Path

from paresseg_jax.config_defaults import get_config
from paresseg_jax.errors import BadInputError, PareSegError

CHECKPOINT_DIR = "checkpoints"
BEST_MODEL = "best_model"
LAST_MODEL = "last_model"
EXPORTED_MODELS = (BEST_MODEL, LAST_MODEL)
# config.eval.checkpoint -> the exported model evaluation scores: the paper scores the model at the end of
# training; 'best' is chosen by validation global Dice, on validation cases carved from the training folds.
CHECKPOINT_CHOICES = {"last": LAST_MODEL, "best": BEST_MODEL}
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"  # case ids of the run's 'train', 'validation' and 'test' sets (and the fold)
METRICS_FILE = "metrics.jsonl"
# {"state": "running" | "stopped" | "finished", "step", "total_steps", "stopped_by"}: written when training starts
# and when it returns, so a run stopped by a signal (or killed: still "running") is never taken for a finished one.
STATUS_FILE = "status.json"
TENSORBOARD_DIR = "tensorboard"
PERTURBED_DIR = "perturbed"  # scores with ART misaligned or absent (paresseg_jax.evaluate.robustness)


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` in order.

    A torn last line (the run was killed while appending it) is dropped; a
    damaged line elsewhere is an error naming the file and the line.
    """
    path = Path(workdir) / METRICS_FILE
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise BadInputError(f"line {number} is not a JSON record", path=path,
                                fix="delete that line (a resumed run rewrites the steps after its checkpoint)") from None
    return records


def read_config(workdir: str | Path) -> dict | None:
    """The config a training run wrote into ``workdir`` merged onto today's defaults (a plain dict), or None if
    there is none. A run saved before a field was added reads as trained with that field's default, so every
    reader finds every declared field and none repeats a default with ``.get``."""
    path = Path(workdir) / CONFIG_FILE
    return merged_onto_defaults(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def merged_onto_defaults(saved: dict) -> dict:
    """``config_defaults.get_config()`` as a plain dict, updated section by section with ``saved``."""
    return _merged(json.loads(json.dumps(get_config().to_dict(), default=list)), saved)


def _merged(defaults, saved):
    if not (isinstance(defaults, dict) and isinstance(saved, dict)):
        return saved
    return {**defaults, **{key: _merged(defaults.get(key), value) for key, value in saved.items()}}


def read_split(workdir: str | Path) -> dict | None:
    """The ``split.json`` a training run wrote into ``workdir``, or None if there is none."""
    path = Path(workdir) / SPLIT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_status(workdir: str | Path) -> dict | None:
    """The ``status.json`` of a training run, or None (no training ever started there)."""
    path = Path(workdir) / STATUS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_finished(workdir: str | Path) -> None:
    """Refuse (one line) a run whose training did not reach its last step: only finished runs are scored."""
    status = read_status(workdir) or {"state": "unknown (no status.json)"}
    if status["state"] != "finished":
        where = f" at step {status['step']} of {status['total_steps']}" if "step" in status else ""
        cause = f" by {status['stopped_by']}" if status.get("stopped_by") else ""
        raise PareSegError(f"training is {status['state']}{cause}{where}, not finished; its model is not scored",
                           path=workdir, fix="rerun the same training command (or cross-validation, demo, ablation) "
                           "to resume it to the end")


def check_not_trained_on(case_ids, model_dirs, where, allow: bool = False) -> None:
    """Refuse (one line) to score models on cases of their own runs' train or validation sets, as their
    ``split.json`` (beside the saved model, or in its folder) names them, unless ``allow``."""
    if allow:
        return
    seen = {}
    for model_dir in model_dirs:
        for folder in (Path(model_dir), Path(model_dir).parent):
            split = read_split(folder)
            if split is not None:
                seen.update({c: folder for c in split.get("train", []) + split.get("validation", [])})
                break
    overlap = sorted(set(map(str, case_ids)) & set(seen))
    if overlap:
        raise PareSegError(f"cases {overlap[:5]}{' ...' if len(overlap) > 5 else ''} trained or validated the model "
                           f"of {seen[overlap[0]]}: scores on them are not test results", path=where,
                           fix="score held-out cases only, or pass --allow_training_cases to score them anyway")
