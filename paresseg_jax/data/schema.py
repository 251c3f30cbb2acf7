"""The shape of the JSON files users write (``manifest.json``, nnU-Net/MSD ``dataset.json``), checked whole.

JSON is read as it is: ``"resample_masks": "false"`` is a string, which
Python's ``bool`` would take as true; ``"pv": 5`` or ``"liver_labels": 1``
would fail deep in the reading code. Each file is checked against a small
schema before any case is used, and the error names the file and the key.
"""

from __future__ import annotations

import os

from paresseg_jax.errors import BadInputError

_TYPE_NAMES = {bool: "true or false", int: "an integer", str: "a string", list: "a list", dict: "an object",
               type(None): "null", float: "a number"}


def _is(value, kinds) -> bool:
    """``isinstance`` where a JSON true is not an integer."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _expect(value, kinds: tuple, key: str, path, fix: str | None = None) -> None:
    if not _is(value, kinds):
        wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise BadInputError(f"{key} is {value!r} ({type(value).__name__}), not {wanted}", path=path,
                            fix=fix or "correct the value")


def _labels(value, key: str, path) -> None:
    fix = f'write {key.split(".")[-1]} as a list of label values of 1 or more, e.g. [1, 2]'
    _expect(value, (list,), key, path, fix)
    for item in value:
        if not _is(item, (int,)) or item < 1:
            raise BadInputError(f"{key} holds {item!r}, not a label value of 1 or more", path=path, fix=fix)


MANIFEST_KEYS = {"cases": (list,), "resample_masks": (bool,)}
CASE_FILES = {"folder": (str,), "liver": (str, type(None)), "tumor": (str, type(None)),
              "segmentation": (str, type(None)), "resample_masks": (bool,), "phases": (dict,)}


def check_manifest(content, path: str | os.PathLike, phases: tuple[str, ...]) -> None:
    """A manifest's content: known top-level keys, each case an object with a ``case_id`` and typed file keys
    (other keys of a case are metadata and kept as they are)."""
    usage = 'expected JSON {"cases": [{"case_id": ...}, ...]}'
    records = content.get("cases") if isinstance(content, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BadInputError("manifest has no list of case records under \"cases\"", path=path, fix=usage)
    for key, value in content.items():
        if key not in MANIFEST_KEYS:
            raise BadInputError(f"unknown top-level key {key!r}", path=path,
                                fix=f"use {sorted(MANIFEST_KEYS)}; per-case information goes into the case records")
        _expect(value, MANIFEST_KEYS[key], key, path)
    for i, record in enumerate(content["cases"]):
        if "case_id" not in record:
            raise BadInputError(f"case #{i} has no \"case_id\"", path=path, fix=usage)
        where = f"cases[{i}] (case {record['case_id']!r})"
        _expect(record["case_id"], (str, int), f"{where} case_id", path)
        for key, kinds in CASE_FILES.items():
            if key in record:
                _expect(record[key], kinds, f"{where} {key}", path)
        for key in ("liver_labels", "tumor_labels"):
            if key in record:
                _labels(record[key], f"{where} {key}", path)
        for phase, file in record.get("phases", {}).items():
            if phase not in phases:
                raise BadInputError(f"{where} has unknown phase {phase!r}", path=path, fix=f"use names from {phases}")
            _expect(file, (str,), f"{where} phases.{phase}", path, "give the image's path, relative to the manifest")


def check_dataset(spec, path: str | os.PathLike) -> None:
    """An nnU-Net v2 / MSD ``dataset.json``: an object whose channel, label and file-ending keys have their types."""
    _expect(spec, (dict,), "the file", path, "expected a JSON object (nnU-Net's dataset.json)")
    for key in ("channel_names", "modality", "labels"):
        if key in spec:
            _expect(spec[key], (dict,), key, path)
    if "file_ending" in spec:
        _expect(spec["file_ending"], (str,), "file_ending", path)
    labels = spec.get("labels", {})
    if all(str(k).isdigit() for k in labels):  # MSD: {"1": "liver", "2": "cancer"}
        return
    for name, value in labels.items():  # nnU-Net v2: {"liver": 1, "tumor": [2, 3]}
        if not all(_is(v, (int,)) for v in (value if isinstance(value, list) else [value])):
            raise BadInputError(f"labels.{name} is {value!r}, not a label value or a list of them", path=path,
                                fix="write label values as integers")
