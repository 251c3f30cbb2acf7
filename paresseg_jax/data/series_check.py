"""A DICOM series checked as one volume before it is read: evenly spaced slices of one orientation and size,
that fits in memory.

ITK stacks whatever slices a folder holds: with one slice missing it reads a
volume one slice short, spreads the gap over all slices (a wrong z
spacing) and only logs a warning. The slices' headers are read first
(SimpleITK alone, no extra needed); a gap, a duplicate position, mixed
orientations or sizes are refused naming the folder and where. With
``allow_gaps`` a gapped series is instead resampled onto an even grid of its
usual spacing, with a warning (``allow_gaps`` here, or within ``gaps_allowed()``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from paresseg_jax.data import declared_size
from paresseg_jax.errors import BadInputError

log = logging.getLogger(__name__)
# Set for a whole command by ``gaps_allowed`` (paresseg-predict --allow_gaps): its DICOM series are read deep inside
# case reading, preflight and folder runs, which need not each pass the choice on.
_GAPS_ALLOWED = contextvars.ContextVar("gaps_allowed", default=False)
_ORIENTATION_ATOL = 1e-3
_SPACING_RTOL = 0.1  # of the usual spacing: headers round positions


def _header(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """A slice's position, orientation, (columns, rows) and bytes per voxel, from its header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    values = {tag: reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else "" for tag in ("0020|0032", "0020|0037")}
    position, orientation = (np.array([float(v) for v in values[tag].split("\\") if v.strip()] or [np.nan])
                             for tag in ("0020|0032", "0020|0037"))
    voxel_bytes = sitk.Image([1, 1], reader.GetPixelID()).GetSizeOfPixelComponent() * reader.GetNumberOfComponents()
    return position, orientation, tuple(reader.GetSize()[:2]), voxel_bytes


def slice_positions(files: Sequence[str], folder: str | os.PathLike) -> np.ndarray:
    """Each slice's position along the series' normal (mm); refused unless all share orientation and size."""
    headers = [_header(str(f)) for f in files]
    where = f"{len(files)} slices"
    orientation = headers[0][1]
    if orientation.shape != (6,) or any(h[0].shape != (3,) for h in headers):
        raise BadInputError(f"{where}: a slice has no ImagePositionPatient/ImageOrientationPatient", path=folder,
                            fix="export the series again with its geometry")
    mixed = [Path(f).name for f, h in zip(files, headers) if not np.allclose(h[1], orientation, atol=_ORIENTATION_ATOL)]
    if mixed:
        raise BadInputError(f"{where} of mixed orientation ({mixed[0]} differs from {Path(files[0]).name})",
                            path=folder, fix="keep one acquisition's slices in the folder")
    sizes = sorted({h[2] for h in headers})
    if len(sizes) > 1:
        raise BadInputError(f"{where} of different sizes {sizes}", path=folder,
                            fix="keep one acquisition's slices in the folder")
    declared_size.fits_in_memory(folder, (*sizes[0], len(files)), max(h[3] for h in headers))
    normal = np.cross(orientation[:3], orientation[3:])
    return np.array([float(np.dot(normal, h[0])) for h in headers])


@contextlib.contextmanager
def gaps_allowed(allowed: bool = True):
    """Within the block, every series read resamples a gap (with a warning) instead of refusing it."""
    token = _GAPS_ALLOWED.set(allowed)
    try:
        yield
    finally:
        _GAPS_ALLOWED.reset(token)


def check_spacing(positions: np.ndarray, folder: str | os.PathLike, allow_gaps: bool) -> float | None:
    """The usual slice spacing (mm) when the sorted ``positions`` have a gap and ``allow_gaps``; None when even.
    A duplicate position, or a gap without ``allow_gaps``, is refused naming where it is."""
    ordered = np.sort(positions)
    steps = np.diff(ordered)
    usual = float(np.median(steps)) if steps.size else 0.0
    duplicates = np.flatnonzero(steps <= _SPACING_RTOL * usual)
    if steps.size and (usual <= 0 or duplicates.size):
        at = ordered[duplicates[0]] if duplicates.size else ordered[0]
        raise BadInputError(f"two slices at the same position ({at:.2f} mm along the normal): duplicates or two "
                            "acquisitions in one series", path=folder,
                            fix="keep one acquisition's slices in the folder")
    uneven = np.flatnonzero(np.abs(steps - usual) > _SPACING_RTOL * usual)
    if not uneven.size:
        return None
    first = int(uneven[0])
    gap = (f"{len(uneven)} uneven step(s), first a gap of {steps[first]:.2f} mm between {ordered[first]:.2f} and "
           f"{ordered[first + 1]:.2f} mm (elsewhere {usual:.2f} mm)")
    if not (allow_gaps or _GAPS_ALLOWED.get()):
        raise BadInputError(f"series has {gap}: a slice is missing", path=folder,
                            fix="find the missing slice(s), or pass --allow_gaps to resample onto even slices")
    log.warning("%s: series has %s; resampled onto even %.2f mm slices (--allow_gaps)", folder, gap, usual)
    return usual


def even_slices(image: sitk.Image, positions: np.ndarray, spacing: float) -> sitk.Image:
    """``image`` (its slices at ``positions``, in the order it stacks them) linearly interpolated onto slices
    ``spacing`` apart from its first slice."""
    offsets = np.abs(np.asarray(positions) - positions[0])
    targets = spacing * np.arange(int(round(offsets[-1] / spacing)) + 1)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    upper = np.clip(np.searchsorted(offsets, targets, side="right"), 1, len(offsets) - 1)
    weight = np.clip((targets - offsets[upper - 1]) / (offsets[upper] - offsets[upper - 1]), 0.0, 1.0)
    weight = weight[:, None, None]
    result = sitk.GetImageFromArray(array[upper - 1] * (1 - weight) + array[upper] * weight)
    result.SetOrigin(image.GetOrigin())
    result.SetDirection(image.GetDirection())
    result.SetSpacing((*image.GetSpacing()[:2], spacing))
    return result
