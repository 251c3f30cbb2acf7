"""Misregistration by known millimetres: a phase moved against PV by a rigid shift and a smooth deformation.

PA-ResSeg's accuracy depends on how well ART is registered to PV (paper,
Fig. 11). One displacement model serves two uses:
- training augmentation (``config.data.misregistration``): each non-PV
  phase of a patch is read at displaced positions, a random shift of up to
  ``shift_mm`` per axis plus a random smooth deformation of up to
  ``deformation_mm``, so the model learns not to rely on voxel-exact
  alignment (:func:`random_displacement`, read by ``windows.displaced_window``);
- test time: a whole phase volume displaced by a chosen amount
  (:func:`misalign`), for curves of Dice against misalignment.

Displacements are millimetres along (z, y, x), divided by the voxel spacing,
so 5 mm is one slice at 5 mm slice spacing and about 7 pixels at 0.7 mm.
A phase displaced by ``d`` shows at position ``p`` what it showed at
``p + d``. The smooth deformation takes independent values in [-1, 1] on a
control grid every ``CONTROL_SPACING_MM`` (breathing moves the liver as a
whole, with differences across it, not from voxel to voxel), interpolated
by cubic B-splines without prefiltering: each displacement is then a
weighted mean of control values (the basis is non-negative and sums to 1),
smooth, and never larger than its amplitude.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

CONTROL_SPACING_MM = 40.0
SETTINGS = ("shift_mm", "deformation_mm")


def check_settings(settings: Mapping | None) -> dict[str, float]:
    """``config.data.misregistration`` as ``{'shift_mm', 'deformation_mm'}`` floats (missing keys: 0 = off)."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"config.data.misregistration has unknown keys {unknown}; it takes {SETTINGS}")
    checked = {key: float(settings.get(key, 0.0)) for key in SETTINGS}
    if any(v < 0 for v in checked.values()):
        raise ValueError(f"config.data.misregistration={checked}: amplitudes are millimetres >= 0 (0 turns one off)")
    return checked


def _bspline_basis(positions_mm: np.ndarray, offset_mm: float) -> np.ndarray:
    """``[len(positions), controls]`` cubic B-spline weights of a control grid every CONTROL_SPACING_MM.

    The grid starts ``offset_mm`` before the first position, with one spare
    control point before and enough after, so every row has its four
    non-zero weights and sums to 1.
    """
    u = 1.0 + (positions_mm + offset_mm) / CONTROL_SPACING_MM
    controls = int(np.floor(u.max())) + 3
    t = np.abs(u[:, None] - np.arange(controls)[None, :])
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0)).astype(np.float32)


def smooth_deformation(
    shape: Sequence[int], spacing_zyx: Sequence[float], amplitude_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """``[3, *shape]`` displacements in mm (z, y, x components): a random smooth field, each component in
    ``[-amplitude_mm, amplitude_mm]``. The draws do not depend on the amplitude, so one generator state
    scaled by several amplitudes gives one pattern at several strengths."""
    bases = [_bspline_basis(np.arange(n) * s, rng.uniform(0, CONTROL_SPACING_MM)) for n, s in zip(shape, spacing_zyx)]
    values = rng.uniform(-1.0, 1.0, size=(3, *(b.shape[1] for b in bases))).astype(np.float32)
    field = np.einsum("cabd,ia,jb,kd->cijk", values, *bases, optimize=True)
    return (amplitude_mm * field).astype(np.float32)


def random_displacement(
    shape: Sequence[int], spacing_zyx: Sequence[float], settings: Mapping[str, float], rng: np.random.Generator
) -> np.ndarray:
    """``[3, *shape]`` voxel displacements for training: a shift uniform in ``[-shift_mm, shift_mm]`` per
    axis plus a smooth deformation of amplitude ``deformation_mm``."""
    shift = rng.uniform(-1.0, 1.0, size=3) * settings["shift_mm"]
    field = smooth_deformation(shape, spacing_zyx, settings["deformation_mm"], rng) + shift[:, None, None, None]
    return field / np.asarray(spacing_zyx, np.float32)[:, None, None, None]


def misalign(
    volume: np.ndarray,
    spacing_zyx: Sequence[float],
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    deformation_mm: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """A whole ``(z, y, x)`` phase volume displaced by a rigid ``shift_mm`` (z, y, x) plus a smooth deformation
    whose largest displacement is ``deformation_mm`` long (pattern fixed by ``seed``, the same at every
    amplitude); linear interpolation, edges repeated."""
    shape = volume.shape
    displacement = smooth_deformation(shape, spacing_zyx, 1.0, np.random.default_rng(seed))
    displacement *= deformation_mm / max(float(np.sqrt((displacement**2).sum(0)).max()), 1e-12)
    displacement += np.asarray(shift_mm, np.float32)[:, None, None, None]
    displacement /= np.asarray(spacing_zyx, np.float32)[:, None, None, None]
    coords = np.indices(shape, np.float32) + displacement
    return ndimage.map_coordinates(np.asarray(volume, np.float32), coords, order=1, mode="nearest").astype(np.float32)
