"""Resumable, shardable folder prediction: which cases are finished, and which cases this process takes.

A case is recorded as finished, in an append-only JSON-lines file of the
output folder, as soon as all its outputs are written: its summary record,
its provenance key (the models' weights, the settings, the output options,
and the size and modification time of each of the case's input files) and
each output file's size and SHA-256. Rerunning the same command skips a case
whose record has the same key and whose outputs still have that size and
digest; another model or setting, an input or output replaced or deleted, or
``overwrite`` predicts it again (as nnU-Net's ``--continue_prediction``). A run
split into parts (``num_parts``, ``part_id``; as nnU-Net's ``-num_parts`` /
``-part_id``) appends to one file per part, so processes on several machines
sharing the folder never write the same file; the folder's summary is made
from every part's records, read and written under the folder's lock
(:func:`summary_lock`). A line cut short by a killed process is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import jax
import numpy as np
from filelock import FileLock

from paresseg_jax.data.cache import config_key
from paresseg_jax.errors import BadInputError

RECORD_GLOB = "finished*.jsonl"
LOCK_FILE = ".summary.lock"


def record_path(output: str | os.PathLike, num_parts: int = 1, part_id: int = 0) -> Path:
    """The file this process appends to: ``finished.jsonl``, or ``finished.part-K-of-N.jsonl`` for a part."""
    name = "finished.jsonl" if num_parts == 1 else f"finished.part-{part_id}-of-{num_parts}.jsonl"
    return Path(output) / name


@contextlib.contextmanager
def summary_lock(output: str | os.PathLike) -> Iterator[None]:
    """Held while a part reads every part's records and writes the folder's summary from them.

    Parts finishing at once would otherwise race: A reads the records, B
    appends its case and writes its summary, A writes a summary without B's
    case. Under the lock, the last summary written was made after every case
    appended before it, and a case appended after it is followed by its own
    part's summary. ``<output>/.summary.lock`` (an OS lock: released if its
    process dies) stays behind, empty.
    """
    Path(output).mkdir(parents=True, exist_ok=True)
    with FileLock(Path(output) / LOCK_FILE):
        yield


def check_part(num_parts: int, part_id: int) -> None:
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise BadInputError(f"part {part_id} of {num_parts} does not exist",
                            fix="give --num_parts N >= 1 and --part_id K with 0 <= K < N")


def part_of(entries: Sequence, num_parts: int = 1, part_id: int = 0) -> list:
    """The entries part ``part_id`` of ``num_parts`` predicts: every ``num_parts``-th in case id order."""
    check_part(num_parts, part_id)
    ordered = sorted(entries, key=lambda entry: entry.case_id)
    return ordered[part_id::num_parts]


def models_checksum(ensembles: Sequence) -> str:
    """SHA-256 of the members' modules and weights: a model retrained into the same folder is another model."""
    digest = hashlib.sha256()
    for ensemble in ensembles:
        for module, variables in ([] if ensemble is None else ensemble.members):
            digest.update(repr(module).encode())
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
                digest.update(jax.tree_util.keystr(path).encode())
                digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def run_key(**provenance) -> str:
    """A hash of everything a run's outputs depend on (models, settings, output options)."""
    return config_key(provenance)


def case_key(run: str, entry) -> str:
    """The key a finished case is reused under: the run's key and the size and time of the case's files."""
    paths = [*entry.phases.values(), entry.liver, entry.tumor, entry.segmentation]
    files = [f for p in paths if p is not None for f in (sorted(Path(p).rglob("*")) if Path(p).is_dir() else [p])]
    stats = [(str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files if Path(f).is_file()]
    return config_key({"run": run, "inputs": stats})


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def append(path: Path, key: str, record: Mapping) -> None:
    """Record a case whose outputs (``record['files']``) are complete: one line, written and synced at once."""
    files = {name: {"path": str(file), "size": os.path.getsize(file), "sha256": file_digest(file)}
             for name, file in record["files"].items()}
    line = json.dumps({"key": key, "outputs": files, "record": record}) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def finished(output: str | os.PathLike, keys: Mapping[str, str]) -> dict[str, dict]:
    """``case_id -> record`` of every case recorded under its key in ``keys`` (case id -> :func:`case_key`)
    whose outputs still check out (the last such line of a case wins)."""
    records = {}
    for path in sorted(Path(output).glob(RECORD_GLOB)):
        for entry in _lines(path):
            case_id = entry.get("record", {}).get("case_id")
            if keys.get(case_id) == entry.get("key") and _outputs_intact(entry.get("outputs", {})):
                records[case_id] = entry["record"]
    return records


def _lines(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # only the last line can be cut short by a killed writer
                raise BadInputError(f"line {number} is damaged", path=path,
                                    fix="delete the file (every case is then predicted again) or that line") from None
    return entries


def _outputs_intact(outputs: Mapping) -> bool:
    return all(Path(o["path"]).is_file() and os.path.getsize(o["path"]) == o["size"]
               and file_digest(o["path"]) == o["sha256"] for o in outputs.values())
