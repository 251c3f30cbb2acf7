"""Lesion counting and measurement against hand-built masks of known size (paresseg_jax.lesions)."""

import csv
import math

import numpy as np
import pytest

from paresseg_jax import lesions
from paresseg_jax.data.images import Geometry


def _grid(shape, spacing_zyx):
    """Voxel-centre coordinates in mm along (z, y, x)."""
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_zyx)], indexing="ij")


def _geometry(spacing_zyx, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    return Geometry(tuple(reversed(spacing_zyx)), origin, tuple(float(d) for d in direction))


def test_sphere_volume_diameters_and_centroid():
    spacing = (2.0, 0.8, 0.8)
    z, y, x = _grid((20, 48, 48), spacing)
    centre = (18.0, 19.2, 17.6)  # mm along z, y, x: voxel (9, 24, 22)
    radius = 12.0 + 1e-6
    sphere = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    origin, flip = (10.0, -20.0, 30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    (lesion,) = lesions.lesion_table(sphere, _geometry(spacing, origin, flip))
    assert lesion["volume_ml"] == pytest.approx(4 / 3 * math.pi * 12.0**3 / 1000, rel=0.02)
    assert lesion["longest_diameter_mm"] == pytest.approx(24.0, abs=1e-6)  # voxels at +-15 x 0.8 mm in x
    assert lesion["perpendicular_diameter_mm"] == pytest.approx(24.0, abs=1e-6)
    assert lesion["diameter_slice"] == 9
    assert (lesion["first_slice"], lesion["last_slice"]) == (3, 15)  # |dz| <= 12 mm at 2 mm: 6 slices each way
    # patient x and y flipped by the direction, z along +z: origin + D (spacing * index)
    assert lesion["centroid_mm"] == pytest.approx([10.0 - 17.6, -20.0 - 19.2, 30.0 + 18.0], abs=1e-9)


def test_ellipse_diameters_on_anisotropic_pixels():
    spacing = (3.0, 0.5, 1.0)
    z, y, x = _grid((5, 64, 32), spacing)
    ellipse = ((y - 16.0) / 10.0) ** 2 + ((x - 15.0) / 4.0) ** 2 <= 1.0 + 1e-9  # semi-axes 10 mm (y), 4 mm (x)
    mask = ellipse & (np.abs(z - 6.0) < 1)  # one slice
    smaller = ((y - 16.0) / 6.0) ** 2 + ((x - 15.0) / 3.0) ** 2 <= 1.0
    mask |= smaller & (np.abs(z - 9.0) < 1)  # a smaller cross-section above: not the measured slice
    (lesion,) = lesions.lesion_table(mask, _geometry(spacing))
    assert lesion["longest_diameter_mm"] == pytest.approx(20.0, abs=1e-6)
    assert lesion["perpendicular_diameter_mm"] == pytest.approx(8.0, abs=1e-6)
    assert lesion["diameter_slice"] == 2 and (lesion["first_slice"], lesion["last_slice"]) == (2, 3)


def test_rotated_ellipse_diameters():
    """An ellipse at 30 degrees to the grid: the diameters follow its axes, within a voxel."""
    y, x = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    angle = math.radians(30)
    u = (x - 32) * math.cos(angle) + (y - 32) * math.sin(angle)
    v = -(x - 32) * math.sin(angle) + (y - 32) * math.cos(angle)
    section = (u / 20.0) ** 2 + (v / 7.0) ** 2 <= 1.0
    longest, perpendicular = lesions.axial_diameters(section, (1.0, 1.0))
    assert 38.0 <= longest <= 40.0
    assert 12.0 <= perpendicular <= 14.5


def test_touching_lesions_are_one_and_separate_ones_are_numbered_by_volume():
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[3:5, 3:5, 3:5] = 1  # meets the first at one corner only: 26-connected, one lesion
    mask[1:4, 10:13, 10:13] = 1  # 27 voxels, one voxel apart from nothing: a second lesion
    records = lesions.lesion_table(mask, _geometry((1.0, 1.0, 1.0)))
    assert [r["lesion"] for r in records] == [1, 2]
    assert [r["volume_ml"] * 1000 for r in records] == pytest.approx([27.0, 16.0])
    assert [(r["first_slice"], r["last_slice"]) for r in records] == [(1, 3), (1, 4)]
    labels, count = lesions.components(mask)
    assert count == 2 and labels[1, 1, 1] == labels[4, 4, 4] == 2 and labels[2, 11, 11] == 1


def test_hu_per_phase_probability_and_burden():
    mask = np.zeros((4, 8, 8), bool)
    mask[1:3, 2:6, 2:6] = True  # 32 voxels
    pv = np.where(mask, 40.0, -1000.0)
    art = np.where(mask, np.where(np.indices(mask.shape).sum(0) % 2 == 0, 80.0, 120.0), 0.0)
    prob = np.where(mask, 0.75, 0.1)
    liver = np.zeros_like(mask)
    liver[:, :, :] = True
    liver[mask] = False  # a label map's liver: tumor voxels are not liver, yet part of the organ
    study = lesions.study_lesions(mask, liver, _geometry((1.0, 1.0, 1.0)), phases_hu={"pv": pv, "art": art},
                                  prob=prob)
    assert study["count"] == 1
    assert study["tumor_burden_pct"] == pytest.approx(100 * 32 / 256)
    (lesion,) = study["lesions"]
    assert lesion["hu"] == {"pv": {"mean": 40.0, "sd": 0.0}, "art": {"mean": 100.0, "sd": 20.0}}
    assert lesion["mean_probability"] == pytest.approx(0.75)
    assert lesions.study_lesions(mask, None, _geometry((1.0, 1.0, 1.0)))["tumor_burden_pct"] is None
    assert lesions.study_lesions(np.zeros_like(mask), liver, _geometry((1.0, 1.0, 1.0)))["count"] == 0


def test_csv_has_one_row_per_lesion_and_every_phase(tmp_path):
    geometry = _geometry((1.0, 1.0, 1.0))
    a = np.zeros((4, 8, 8), bool)
    a[1, 1:3, 1:3] = True
    rows = lesions.csv_rows("a", lesions.lesion_table(a, geometry, phases_hu={"pv": np.full(a.shape, 5.0)}))
    rows += lesions.csv_rows("b", lesions.lesion_table(a, geometry, phases_hu={"pv": a * 1.0, "art": a * 2.0}))
    path = lesions.write_csv(tmp_path / lesions.CSV_FILE, rows)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0])[: len(lesions.CSV_COLUMNS)] == list(lesions.CSV_COLUMNS)
    assert [r["case_id"] for r in read] == ["a", "b"]
    assert read[0]["pv_hu_mean"] == "5.00" and read[0]["art_hu_mean"] == "" and read[1]["art_hu_mean"] == "2.00"
    assert read[0]["volume_ml"] == "0.00" and read[0]["longest_diameter_mm"] == "1.41"
