"""On-disk cache of preprocessed cases: the contract between preprocessing and
everything that reads training or evaluation data.

Layout::

    <root>/<key>/preprocess.json      the preprocessing config that made it
    <root>/<key>/<case_id>/<phase>.npy float32 (Z, H, W), windowed to [0, 1]
                           liver.npy   uint8 (Z, H, W) liver mask (0/1)
                           tumor.npy   uint8 (Z, H, W) tumor mask (0/1)
                           roi.npy     uint8 (Z, H, W) dilated liver ROI (0/1)
                           weight.npy  float32 (Z, H, W) boundary-enhanced weights
                           meta.json   written last: its presence marks a complete case

``key`` is a hash of the preprocessing config, so changing a preprocessing
setting never reads stale data. A case is written into a temporary folder and
renamed into place, so a killed run leaves nothing that is later read as valid.
Arrays are opened memory-mapped. Axis order is (z, y, x); ``spacing``,
``origin`` and ``direction`` (in ``meta.json``) are in SimpleITK (x, y, z) order.
A ``CachedCase`` answers to the same names as a ``data.case.Case``
(``case_id``, ``metadata``, ``shape``, ``spacing``, ``origin``,
``direction``, ``spacing_zyx``, ``geometry``, ``phases``, ``liver``, ``tumor``), so
code reads either the same way; its ``phases`` map each name to the windowed [0, 1] array
(memory-mapped when read), a ``Case``'s to HU volumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from paresseg_jax.atomic import atomic_path, write_text
from paresseg_jax.data.images import Geometry
from paresseg_jax.errors import MissingInputError
from paresseg_jax.json_values import numpy_value

MASKS = ("liver", "tumor", "roi")
_META = "meta.json"


def config_key(preprocess_config: Mapping) -> str:
    """Short stable hash of a preprocessing config (JSON, sorted keys)."""
    text = json.dumps(dict(preprocess_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir_for(root: str | os.PathLike, preprocess_config: Mapping) -> Path:
    """The cache folder for one preprocessing config; creates it and records the config."""
    path = Path(root) / config_key(preprocess_config)
    path.mkdir(parents=True, exist_ok=True)
    record = path / "preprocess.json"
    if not record.exists():
        write_text(record, json.dumps(dict(preprocess_config), sort_keys=True, indent=1, default=str))
    return path


@dataclasses.dataclass(frozen=True)
class CachedCase:
    """A preprocessed case on disk; arrays are memory-mapped on access."""

    case_id: str
    path: Path
    metadata: dict

    @property
    def phases(self) -> Mapping[str, np.ndarray]:
        """Phase name -> windowed array, PV first, as ``Case.phases``; an array is opened when read."""
        return _CachedPhases(self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.metadata["shape"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.metadata["spacing"])

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(self.metadata["origin"])

    @property
    def direction(self) -> tuple[float, ...]:
        return tuple(self.metadata["direction"])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy array order (z, y, x), as metrics and filters on the arrays need it."""
        return tuple(reversed(self.spacing))

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self)

    @property
    def liver_bbox(self) -> tuple[int, int, int, int, int, int]:
        """Half-open (z0, z1, y0, y1, x0, x1) box of the liver mask."""
        return tuple(self.metadata["liver_bbox"])

    @property
    def tumor_type(self) -> str | None:
        return self.metadata.get("tumor_type")

    def image(self, phase: str) -> np.ndarray:
        return self.phases[phase]

    @property
    def liver(self) -> np.ndarray:
        return self._load("liver")

    @property
    def tumor(self) -> np.ndarray:
        return self._load("tumor")

    @property
    def roi(self) -> np.ndarray:
        return self._load("roi")

    @property
    def weight(self) -> np.ndarray:
        return self._load("weight")

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r")


class _CachedPhases(Mapping):
    """A cached case's phases as a mapping whose arrays are memory-mapped on access."""

    def __init__(self, case: CachedCase):
        self._case, self._names = case, tuple(case.metadata["phases"])

    def __getitem__(self, phase: str) -> np.ndarray:
        if phase not in self._names:
            raise KeyError(f"case {self._case.case_id!r} in {self._case.path} has phases {self._names}, not {phase!r}")
        return self._case._load(phase)

    def __contains__(self, phase) -> bool:
        return phase in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"phases({', '.join(self._names)})"


def bounding_box(mask: np.ndarray) -> tuple[int, ...]:
    """Half-open box (z0, z1, y0, y1, x0, x1) of a 3D mask; the whole volume if empty."""
    if not mask.any():
        return tuple(v for n in mask.shape for v in (0, n))
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(box)


def store_case(
    cache_dir: str | os.PathLike,
    case_id: str,
    images: Mapping[str, np.ndarray],
    liver: np.ndarray,
    tumor: np.ndarray,
    roi: np.ndarray,
    weight: np.ndarray,
    metadata: Mapping,
) -> CachedCase:
    """Write one preprocessed case atomically into the cache and return it opened."""
    cache_dir = Path(cache_dir)
    shape = tuple(liver.shape)
    arrays = {p: np.asarray(a, np.float32) for p, a in images.items()}
    arrays.update({"liver": liver, "tumor": tumor, "roi": roi})
    arrays = {k: (np.asarray(v, np.uint8) if k in MASKS else v) for k, v in arrays.items()}
    arrays["weight"] = np.asarray(weight, np.float32)
    for name, array in arrays.items():
        if array.shape != shape:
            raise ValueError(f"case {case_id!r}: {name} has shape {array.shape}, expected {shape} like the liver mask")
    full_meta = dict(metadata)
    full_meta.update(case_id=case_id, phases=list(images), shape=list(shape), liver_bbox=list(bounding_box(liver > 0)))
    final = cache_dir / case_id
    with atomic_path(final, directory=True) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / _META).write_text(json.dumps(full_meta, indent=1, default=numpy_value), encoding="utf-8")
    return open_case(final)


def is_cached(cache_dir: str | os.PathLike, case_id: str) -> bool:
    return (Path(cache_dir) / case_id / _META).exists()


def open_case(path: str | os.PathLike) -> CachedCase:
    path = Path(path)
    meta_file = path / _META
    if not meta_file.exists():
        raise MissingInputError(f"is not a complete cached case (no {_META})", path=path, fix="rerun preprocessing")
    metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    return CachedCase(case_id=metadata["case_id"], path=path, metadata=metadata)


def open_cohort(cache_dir: str | os.PathLike, case_ids=None) -> list[CachedCase]:
    """All complete cases in a cache folder (sorted by id), or the named ones.

    Half-written cases (temporary folders, folders without meta.json) are ignored.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise MissingInputError("cache folder does not exist", path=cache_dir, fix="run preprocessing first")
    if case_ids is None:
        found = sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".") and (p / _META).exists())
    else:
        found = list(case_ids)
        missing = [c for c in found if not is_cached(cache_dir, c)]
        if missing:
            raise MissingInputError(f"cases {missing} are not in the cache", path=cache_dir, fix="preprocess them first")
    if not found:
        raise ValueError(f"no preprocessed cases in {cache_dir}; run preprocessing first")
    return [open_case(cache_dir / c) for c in found]
