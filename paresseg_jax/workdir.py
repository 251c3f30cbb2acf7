"""The layout of a training workdir: its file and folder names and their readers.

Training writes this layout; inference, evaluation and the reports read it.
It sits below all three so that none of them imports another for a file name.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
BEST_MODEL = "best_model"
LAST_MODEL = "last_model"
EXPORTED_MODELS = (BEST_MODEL, LAST_MODEL)
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` in order."""
    path = Path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_config(workdir: str | Path) -> dict | None:
    """The config a training run wrote into ``workdir`` (a plain dict), or None if there is none."""
    path = Path(workdir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None
