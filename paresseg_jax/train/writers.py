"""Where training metrics go: ``<workdir>/metrics.jsonl`` and TensorBoard events (process 0 only).

One JSON object per line (``{"step": ..., "split": "train"|"val", ...}``) is
easy to read back for plots and reports; the same scalars go to TensorBoard
under ``<split>/<name>``. Other processes get a writer that does nothing, so
the loop never branches on the process index. A resumed run writes again the
steps after its checkpoint, so what an interrupted run logged past it is
dropped first (from the JSON lines, with a line torn by the kill, and purged
from TensorBoard).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from paresseg_jax.atomic import write_text
from paresseg_jax.workdir import METRICS_FILE, TENSORBOARD_DIR, read_metrics


class MetricsWriter:
    """Appends to ``<workdir>/metrics.jsonl`` after dropping its records past `resume_step`."""

    def __init__(self, workdir: str | Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self._file = None
        self._board = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            path = Path(workdir) / METRICS_FILE
            if path.is_file():
                kept = [record for record in read_metrics(workdir) if record["step"] <= resume_step]
                write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
            self._file = open(path, "a", buffering=1, encoding="utf-8")
            self._board = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR), purge_step=resume_step + 1)

    def write(self, step: int, split: str, values: dict) -> None:
        """Scalars (numbers) go to both; nested values (per-case Dice) to the JSON line only."""
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._board.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._board.close()
