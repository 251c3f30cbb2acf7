"""Misregistration by known millimetres: the displacement model, the displaced training window, misalign.

Volumes are coded linearly, ``code(z, y, x) = z*H*W + y*W + x + 1``, so
linear interpolation reads exactly the code of the displaced position and a
displacement can be read back from the values.
"""

import numpy as np
import pytest

from paresseg_jax import config_defaults
from paresseg_jax.data import cache, misregistration, pipeline, windows

SHAPE = (6, 40, 44)
SPACING = (5.0, 0.8, 0.7)  # z, y, x


def _code(shape=SHAPE):
    zz, yy, xx = np.indices(shape)
    return (zz * shape[1] * shape[2] + yy * shape[2] + xx + 1).astype(np.float32)


def test_smooth_deformation_is_bounded_smooth_and_one_pattern_at_every_amplitude():
    field = misregistration.smooth_deformation(SHAPE, SPACING, 3.0, np.random.default_rng(0))
    assert field.shape == (3, *SHAPE) and np.abs(field).max() <= 3.0 and np.abs(field).max() > 0.5
    twice = misregistration.smooth_deformation(SHAPE, SPACING, 6.0, np.random.default_rng(0))
    np.testing.assert_allclose(twice, 2 * field, rtol=1e-5, atol=1e-6)
    # 40 mm control spacing: neighbouring pixels 0.7-0.8 mm apart move by a small fraction of the amplitude
    assert np.abs(np.diff(field, axis=3)).max() < 0.1 * 3.0 and np.abs(np.diff(field, axis=2)).max() < 0.1 * 3.0


def test_basis_rows_are_convex_weights():
    basis = misregistration._bspline_basis(np.arange(100) * 0.7, 13.0)
    np.testing.assert_allclose(basis.sum(1), 1.0, rtol=1e-6)
    assert basis.min() >= 0 and ((basis > 0).sum(1) <= 4).all()


def test_misalign_reads_each_voxel_from_the_shifted_position():
    code = _code()
    moved = misregistration.misalign(code, SPACING, shift_mm=(0.0, 2 * 0.8, -3 * 0.7))
    np.testing.assert_allclose(moved[:, 5:30, 5:30], code[:, 7:32, 2:27], rtol=1e-6)
    half_slice = misregistration.misalign(code, SPACING, shift_mm=(2.5, 0.0, 0.0))
    np.testing.assert_allclose(half_slice[1:4], (code[1:4] + code[2:5]) / 2, rtol=1e-6)


def test_misalign_deformation_stays_within_its_amplitude_and_comes_near_it():
    """Each coordinate ramp, misaligned with one seed, reads back one component of the displacement."""
    ramps = np.indices(SHAPE).astype(np.float32)
    moved = np.stack([misregistration.misalign(r, SPACING, deformation_mm=4.0, seed=3) for r in ramps])
    core = (slice(None), slice(1, -1), slice(8, -8), slice(8, -8))  # away from the edges, where reads are clamped
    length = np.sqrt(((((moved - ramps)[core]) * np.asarray(SPACING)[:, None, None, None]) ** 2).sum(0))
    assert 2.0 < length.max() <= 4.0 + 1e-3


def test_displaced_window_is_read_window_moved_by_whole_voxels():
    code = _code()
    zs = windows.slice_indices(0, SHAPE[0], 3)  # [0, 0, 1]: the edge slice repeated
    still = windows.displaced_window(code, zs, -4, 30, 16, np.zeros((3, 3, 16, 16), np.float32))
    np.testing.assert_array_equal(still, windows.read_window(code, zs, -4, 30, 16))  # zeros outside the image
    step = np.zeros((3, 3, 16, 16), np.float32)
    step[1], step[2] = 2, -1
    np.testing.assert_array_equal(windows.displaced_window(code, zs, 5, 6, 16, step),
                                  windows.read_window(code, zs, 7, 5, 16))


@pytest.mark.parametrize("shift_mm, deformation_mm", [(4.0, 0.0), (0.0, 3.0), (2.0, 2.0)])
def test_training_patches_move_only_the_other_phases_within_the_amplitudes(tmp_path, shift_mm, deformation_mm):
    """PV is coded by position; ART, NC and DL hold 100 + their z, y and x coordinate, so a displaced read
    gives the displacement along that axis (linear interpolation of a linear ramp is exact)."""
    phases = ("pv", "art", "nc", "dl")
    ramps = [a.astype(np.float32) + 100 for a in np.indices(SHAPE)]
    liver = np.ones(SHAPE, np.uint8)
    case = cache.store_case(tmp_path, "m", dict(zip(phases, [_code(), *ramps])), liver, liver * 0, liver, _code(),
                            {"spacing": list(reversed(SPACING))})
    plain = pipeline.PairedPatch(phases, 3, crop_size=16)
    moving = pipeline.PairedPatch(phases, 3, crop_size=16,
                                  misregistration={"shift_mm": shift_mm, "deformation_mm": deformation_mm})
    limit = shift_mm + deformation_mm
    largest = 0.0
    for seed in range(20):
        record = {"case": case, "z": 2 + seed % 2}  # stacks of slices 1-4: displaced reads stay inside 0-5
        a = plain.random_map(record, np.random.default_rng(seed))
        b = moving.random_map(record, np.random.default_rng(seed))
        for key in ("pv", "label", "weight"):
            np.testing.assert_array_equal(a[key], b[key])
        h, w = SHAPE[1:]
        true = np.stack(np.unravel_index(np.rint(a["pv"]).astype(int) - 1, SHAPE))  # [3 axes, H, W, C]
        inside = (true[1] >= 8) & (true[1] < h - 8) & (true[2] >= 8) & (true[2] < w - 8)
        for axis, phase in enumerate(phases[1:]):
            moved_mm = (b[phase] - 100 - true[axis])[inside] * SPACING[axis]
            np.testing.assert_array_equal(a[phase][inside] - 100, true[axis][inside])  # unmoved without it
            assert np.abs(moved_mm).max() <= limit + 1e-3
            if deformation_mm == 0:  # a rigid shift moves every pixel alike
                assert np.ptp(moved_mm) < 1e-3
            largest = max(largest, float(np.abs(moved_mm).max()))
    assert largest > 0.5 * limit


def test_the_training_loader_takes_the_amplitudes_from_the_config(tmp_path):
    code = _code()
    liver = np.ones(SHAPE, np.uint8)
    case = cache.store_case(tmp_path, "c", {"pv": code, "art": 2 * code}, liver, liver * 0, liver, code,
                            {"spacing": list(reversed(SPACING))})
    config = config_defaults.get_config()
    config.data.crop_size, config.train.batch_size = 16, 4
    batches = []
    for shift_mm in (0.0, 3.0):
        config.data.misregistration.shift_mm = shift_mm
        batches.append(next(iter(pipeline.make_train_loader(config, [case], seed=0, worker_count=0))))
    np.testing.assert_array_equal(batches[0]["pv"], batches[1]["pv"])
    np.testing.assert_array_equal(batches[0]["art"], 2 * batches[0]["pv"])
    assert not np.array_equal(batches[1]["art"], 2 * batches[1]["pv"])


def test_settings_are_checked():
    assert misregistration.check_settings(config_defaults.get_config().data.misregistration) == {"shift_mm": 0.0,
                                                                                       "deformation_mm": 0.0}
    with pytest.raises(ValueError, match="unknown keys"):
        misregistration.check_settings({"shift": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        misregistration.check_settings({"shift_mm": -1.0})
