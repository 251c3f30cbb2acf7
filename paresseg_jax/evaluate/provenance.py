"""What a ``summary.json`` scored, so that a stored result is reused only for exactly that.

A scored run's summary records, under ``info.provenance``: the checksums of
the tumor model and of the cascade's liver model (their weights and specs),
the run's config, the protocol, the scored case ids, the key of the cache
they were read from and the postprocessing applied (None: none). A result is reused only when every one of these is what
scoring would use now; otherwise it is scored again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from paresseg_jax.summary import SUMMARY_FILE, read_summary
from paresseg_jax.model_io import SPEC_FILE

KEY = "provenance"


def model_checksum(model_dir: str | os.PathLike, variables: Mapping) -> str:
    """sha256 of a saved model's spec (``model.json``, as JSON with sorted keys) and its loaded weights: the
    same for the same model however often it is exported, different for any other weights or architecture."""
    spec = json.loads((Path(model_dir) / SPEC_FILE).read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0], key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def record(*, model_sha256: str, liver_model_sha256: str | None, config: Mapping, protocol: Mapping,
           case_ids, cache_dir: str | os.PathLike, postprocessing: Mapping | None = None) -> dict:
    """The provenance of scoring ``case_ids`` from ``cache_dir`` with these models (:func:`model_checksum`),
    config, protocol and postprocessing settings, in the form it takes in JSON (so a stored one compares
    equal). A summary stored before postprocessing was recorded reads as None: still current without one."""
    content = {
        "model_sha256": model_sha256,
        "liver_model_sha256": liver_model_sha256,
        "config": dict(config),
        "protocol": dict(protocol),
        "cases": sorted(str(c) for c in case_ids),
        "cache_key": Path(cache_dir).name,
        "postprocessing": None if postprocessing is None else dict(postprocessing),
    }
    return json.loads(json.dumps(content, default=list))


def stored(out_dir: str | os.PathLike) -> dict | None:
    """The summary in ``out_dir`` and the provenance it records, or None without one."""
    if not (Path(out_dir) / SUMMARY_FILE).is_file():
        return None
    return read_summary(out_dir)


def differences(stored_provenance: Mapping | None, expected: Mapping) -> list[str]:
    """The provenance entries in which a stored result differs from what scoring would use now."""
    stored_provenance = stored_provenance or {}
    return [key for key in expected if stored_provenance.get(key) != expected[key]]
