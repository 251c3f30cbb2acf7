"""The layout of a training workdir: its file and folder names and their readers.

Training writes this layout; inference, evaluation and the reports read it.
It sits below all three so that none of them imports another for a file name.
"""

from __future__ import annotations

import json
from pathlib import Path

from paresseg_jax.errors import BadInputError

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
TENSORBOARD_DIR = "tensorboard"
PERTURBED_DIR = "perturbed"  # scores with ART misaligned or absent (paresseg_jax.evaluate.robustness)


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` in order.

    A torn last line (the run was killed while appending it) is dropped; a
    damaged line elsewhere is an error naming the file and the line.
    """
    path = Path(workdir) / METRICS_FILE
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
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
    """The config a training run wrote into ``workdir`` (a plain dict), or None if there is none."""
    path = Path(workdir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_split(workdir: str | Path) -> dict | None:
    """The ``split.json`` a training run wrote into ``workdir``, or None if there is none."""
    path = Path(workdir) / SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
