"""Preprocessing: window, ROI, BE weights against hand computations; registration; cache behaviour."""

import itertools
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax.data import cache, phantom, preprocess
from paresseg_jax.data.case import read_case
from paresseg_jax.data.images import Geometry, write_image
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.data.registration import apply_transform, register_phase


def test_hu_window_maps_the_paper_window_to_unit_range():
    hu = np.array([-1000.0, -70.0, 55.0, 180.0, 1000.0])
    np.testing.assert_allclose(preprocess.hu_window(hu), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert preprocess.hu_window(hu).dtype == np.float32


def test_liver_roi_dilates_5x5_within_each_slice_only():
    liver = np.zeros((3, 9, 9), np.uint8)
    liver[1, 4, 4] = 1
    roi = preprocess.liver_roi(liver, 5)
    expected = np.zeros_like(liver)
    expected[1, 2:7, 2:7] = 1
    np.testing.assert_array_equal(roi, expected)


# ----------------------------------------------------------------------------- boundary-enhanced weights


def _be_oracle(mask, w1=0.8, w2=0.2, alpha=1.0, beta=0.5):
    """Eq. 5-6 by explicit neighbourhood sums in float64 (zeros beyond the volume)."""
    padded = np.pad(mask.astype(np.float64), 1)
    out = np.empty(mask.shape)
    for z, y, x in itertools.product(*map(range, mask.shape)):
        v = padded[z : z + 3, y : y + 3, x : x + 3].sum() / 27.0
        out[z, y, x] = -alpha * v + alpha + w1 if mask[z, y, x] else beta * v + w2
    return out


def test_be_weights_of_a_cube_by_hand():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1:4, 1:4, 1:4] = 1
    w = preprocess.boundary_enhanced_weights(mask)
    assert w[2, 2, 2] == pytest.approx(0.8)  # interior: v = 1
    assert w[1, 2, 2] == pytest.approx(1.8 - 18 / 27)  # face of the cube (first tumor slice): v = 18/27
    assert w[1, 1, 1] == pytest.approx(1.8 - 8 / 27)  # corner: v = 8/27, the largest weight
    assert w[0, 2, 2] == pytest.approx(0.2 + 0.5 * 9 / 27)  # background touching a face
    assert w[0, 0, 0] == pytest.approx(0.2 + 0.5 * 1 / 27)  # background touching a corner only
    assert w[1, 2, 2] > w[2, 2, 2] and w[0, 2, 2] > w[0, 0, 0] > 0.2


def test_be_weights_far_background_and_volume_border():
    mask = np.zeros((3, 9, 9), np.uint8)
    mask[:, :3, :3] = 1  # a tumor cut by the first and last slice and by the volume's sides
    w = preprocess.boundary_enhanced_weights(mask)
    assert w[1, 8, 8] == pytest.approx(0.2)  # far from the tumor
    assert w[1, 1, 1] == pytest.approx(0.8)  # interior
    assert w[0, 1, 1] == pytest.approx(1.8 - 18 / 27)  # zero padding: the volume border counts as boundary


def test_be_weights_match_float64_oracle_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(3):
        mask = (rng.random((4, 6, 7)) < 0.4).astype(np.uint8)
        np.testing.assert_allclose(preprocess.boundary_enhanced_weights(mask), _be_oracle(mask), rtol=1e-6)
    mask = (rng.random((4, 6, 7)) < 0.4).astype(np.uint8)
    np.testing.assert_allclose(
        preprocess.boundary_enhanced_weights(mask, w1=0.7, w2=0.1, alpha=2.0, beta=0.25),
        _be_oracle(mask, 0.7, 0.1, 2.0, 0.25),
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------- registration


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _register(seed, shape, scanner="scanner_5mm"):
    tumor_type = phantom.TUMOR_TYPES[seed % 5]
    case, masks = phantom.make_case_with_phase_masks(seed, tumor_type, shape, scanner=scanner)
    start = time.perf_counter()
    transform, report = register_phase(case.phases["pv"], case.phases["art"], case, region=preprocess.liver_roi(case.liver))
    seconds = time.perf_counter() - start
    art_liver = masks["art"]["liver"].astype(np.float32)
    moved = apply_transform(art_liver, case, transform) > 0.5  # linear then 0.5: no double nearest-neighbour staircase
    before, after = _dice(art_liver, case.liver), _dice(moved, case.liver)
    print(f"registration seed {seed} {tumor_type} {scanner} {shape}: Dice {before:.3f} -> {after:.3f}, {seconds:.1f} s")
    assert report["metric_after"] < report["metric_before"]  # Mattes MI is negated: lower is better
    return before, after


@pytest.fixture
def four_itk_threads():
    """ITK at four threads whatever the machine: thread-order effects must show even on one core."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def test_registration_is_reproducible(four_itk_threads):
    """The same case and settings give the same transform every call: fixed seed (ITK's 0 means the wall
    clock) and one work unit (ITK merges multithreaded Mattes derivatives in finishing order)."""
    case = phantom.make_case(0, "HCC", shape=(20, 128, 128))
    moved = [apply_transform(case.phases["art"], case, register_phase(
        case.phases["pv"], case.phases["art"], case, None, preprocess.liver_roi(case.liver))[0]) for _ in range(2)]
    np.testing.assert_array_equal(moved[0], moved[1])


def test_registration_realigns_art_liver_with_pv_liver():
    # 128 x 128 keeps voxels near 3.5 mm: on coarser grids voxelisation alone caps the Dice near 0.95
    before, after = _register(5, (32, 128, 128))
    assert before < 0.9
    assert after >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("seed, scanner", [(3, "scanner_5mm"), (4, "scanner_5mm"), (6, "scanner_5mm"), (7, "scanner_5mm"),
                                           (8, "scanner_7mm"), (9, "scanner_7mm")])
def test_registration_realigns_more_cases(seed, scanner):
    before, after = _register(seed, (32, 128, 128), scanner)
    assert before < 0.95 and after >= 0.95


@pytest.mark.parametrize("initial", ["affine", "none"])
def test_registration_start_options_improve_the_metric(initial):
    case = phantom.make_case(1, "HCC", (12, 48, 48))
    settings = {"initial": initial, "initial_iterations": 20, "bspline_iterations": 5}
    transform, report = register_phase(case.phases["pv"], case.phases["art"], case, settings, case.liver)
    assert report["metric_after"] < report["metric_before"]
    assert apply_transform(case.phases["art"], case, transform).shape == case.shape


def test_apply_transform_moves_masks_with_nearest_neighbour():
    import SimpleITK as sitk

    mask = np.zeros((4, 6, 6), np.uint8)
    mask[1:3, 2:4, 2:4] = 1
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    moved = apply_transform(mask, geometry, sitk.TranslationTransform(3, (1.0, 0.0, 2.0)), nearest=True)
    np.testing.assert_array_equal(moved[0:2, 2:4, 1:3], 1)  # content moves by -1 x voxel and -1 slice
    assert moved.sum() == mask.sum() and moved.dtype == np.uint8


# ----------------------------------------------------------------------------- cases and cache


def _cohort(tmp_path, n=2):
    return phantom.make_cohort(tmp_path / "cohort", n, seed=0, shape=(8, 32, 32), progress=False)


def test_preprocess_case_windows_keeps_roi_and_weights():
    case = phantom.make_case(2, "FNH", (8, 32, 32))
    out = preprocess.preprocess_case(case, {"register": False})
    roi = preprocess.liver_roi(case.liver)
    np.testing.assert_array_equal(out["roi"], roi)
    for name, image in out["images"].items():
        windowed = np.clip((case.phases[name] + 70.0) / 250.0, 0, 1)
        np.testing.assert_allclose(image, windowed, atol=1e-6)
        np.testing.assert_allclose(preprocess.roi_gate(image, roi), np.where(roi > 0, windowed, 0.0), atol=1e-6)
    np.testing.assert_allclose(out["weight"], _be_oracle(case.tumor), rtol=1e-6)
    assert out["metadata"]["tumor_type"] == "FNH" and out["metadata"]["spacing"] == list(case.spacing)
    assert set(out["metadata"]) >= {"scanner", "origin", "direction", "registration"}


def test_preprocess_case_uses_a_liver_prediction_for_the_roi():
    case = phantom.make_case(2, "FNH", (8, 32, 32))
    prediction = np.zeros_like(case.liver)
    prediction[4, 10, 10] = 1
    out = preprocess.preprocess_case(case, {"register": False}, liver_prediction=prediction)
    assert out["roi"].sum() == 25 and np.count_nonzero(preprocess.roi_gate(out["images"]["pv"], out["roi"])) <= 25
    np.testing.assert_array_equal(out["liver"], case.liver)


def test_preprocess_case_without_masks_raises():
    case = phantom.make_case(2, "FNH", (8, 32, 32))
    case.tumor = None
    with pytest.raises(ValueError, match="no tumor mask"):
        preprocess.preprocess_case(case, {"register": False})


def test_unknown_setting_raises():
    with pytest.raises(KeyError, match="roi_dilatation"):
        preprocess.resolve_config({"roi_dilatation": 5})
    with pytest.raises(KeyError, match="mesh"):
        preprocess.resolve_config({"registration": {"mesh": 3}})


def test_settings_change_a_base_config_section_by_section():
    """A registration variant of a run's preprocessing (the ablation's rigid-only test cases): the changed
    setting replaced, the base's other settings kept, nested sections merged."""
    base = preprocess.resolve_config({"window": [-100, 200], "registration": {"mesh_mm": 60.0}})
    variant = preprocess.resolve_config({"registration": {"bspline_iterations": 0}}, base=base)
    assert variant["window"] == [-100.0, 200.0] and variant["registration"]["mesh_mm"] == 60.0
    assert variant["registration"]["bspline_iterations"] == 0 and base["registration"]["bspline_iterations"] > 0
    assert {k: v for k, v in variant.items() if k != "registration"} == {k: v for k, v in base.items() if k != "registration"}


def test_code_revision_is_part_of_the_cache_key(tmp_path, monkeypatch):
    """A cache made by code that registered differently is made again, not reused."""
    resolved = preprocess.resolve_config({"register": False})
    assert resolved["revision"] == preprocess.REVISION and preprocess.resolve_config(resolved) == resolved
    current = cache.cache_dir_for(tmp_path, resolved)
    monkeypatch.setattr(preprocess, "REVISION", preprocess.REVISION + 1)
    assert cache.cache_dir_for(tmp_path, preprocess.resolve_config({"register": False})) != current
    with pytest.raises(ValueError, match="revision"):
        preprocess.resolve_config(resolved)


def test_preprocess_cohort_fills_cache_and_is_idempotent(tmp_path, monkeypatch):
    cohort = _cohort(tmp_path)
    config = {"register": False}
    cache_dir = preprocess.preprocess_cohort(cohort, tmp_path / "cache", config, progress=False)
    assert cache_dir == cache.cache_dir_for(tmp_path / "cache", preprocess.resolve_config(config))
    cases = cache.open_cohort(cache_dir)
    assert [c.case_id for c in cases] == ["case_0000", "case_0001"]
    manifest = json.loads((cohort / "manifest.json").read_text())["cases"]
    assert cases[1].tumor_type == manifest[1]["tumor_type"] and cases[1].metadata["scanner"] == manifest[1]["scanner"]
    np.testing.assert_array_equal(cases[0].tumor, read_case(cohort / "case_0000").tumor)

    def fail(*args, **kwargs):
        raise AssertionError("a cached case was preprocessed again")

    monkeypatch.setattr(preprocess, "preprocess_case", fail)
    assert preprocess.preprocess_cohort(cohort, tmp_path / "cache", config, progress=False) == cache_dir
    # another setting is another cache folder
    monkeypatch.undo()
    other = preprocess.preprocess_cohort(cohort, tmp_path / "cache", {"register": False, "roi_dilation": 3}, progress=False)
    assert other != cache_dir and len(cache.open_cohort(other)) == 2


def test_killed_write_leaves_no_case_that_reads_as_valid(tmp_path, monkeypatch):
    cohort = _cohort(tmp_path)
    config = {"register": False}
    calls = {"n": 0}
    real_save = np.save

    def save_then_die(path, array):  # dies while the second case's arrays are being written
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("killed")
        real_save(path, array)

    monkeypatch.setattr(cache.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        preprocess.preprocess_cohort(cohort, tmp_path / "cache", config, progress=False, workers=1)
    monkeypatch.undo()
    cache_dir = cache.cache_dir_for(tmp_path / "cache", preprocess.resolve_config(config))
    assert [c.case_id for c in cache.open_cohort(cache_dir)] == ["case_0000"]
    # a SIGKILL leaves a temporary folder behind: it is never read as a case, and a rerun completes
    leftover = cache_dir / "case_0001.tmp-deadbeef"
    leftover.mkdir()
    np.save(leftover / "pv.npy", np.zeros(3))
    preprocess.preprocess_cohort(cohort, tmp_path / "cache", config, progress=False)
    assert [c.case_id for c in cache.open_cohort(cache_dir)] == ["case_0000", "case_0001"]


def test_worker_processes_give_the_same_cache(tmp_path):
    """Cases preprocessed in two spawned processes (registration included) match the in-process ones byte
    for byte, and a worker's failure reaches the caller."""
    cohort = phantom.make_cohort(tmp_path / "cohort", 3, seed=0, shape=(12, 64, 64), progress=False)
    config = {"registration": {"bspline_iterations": 5, "initial_iterations": 5}}
    serial = preprocess.preprocess_cohort(cohort, tmp_path / "serial", config, progress=False, workers=1)
    parallel = preprocess.preprocess_cohort(cohort, tmp_path / "parallel", config, progress=False, workers=2)
    for a, b in zip(cache.open_cohort(serial), cache.open_cohort(parallel), strict=True):
        for name, array in {"pv": a.image("pv"), "art": a.image("art"), "roi": a.roi, "weight": a.weight}.items():
            other = b.image(name) if name in b.phases else getattr(b, name)
            np.testing.assert_array_equal(array, other, err_msg=f"{a.case_id} {name}")
    predictions = tmp_path / "liver_pred"
    case = read_case(read_cohort(cohort)[0])
    write_image(case.liver, case, predictions / "case_0000.nii.gz")  # case_0001 and case_0002 have none
    with pytest.raises(FileNotFoundError, match="no liver prediction"):
        preprocess.preprocess_cohort(cohort, tmp_path / "pred", {"register": False, "roi_source": str(predictions)},
                                     progress=False, workers=2)
    with pytest.raises(ValueError, match="workers"):
        preprocess.preprocess_cohort(cohort, tmp_path / "serial", config, progress=False, workers=-1)


def test_roi_from_liver_prediction_folder(tmp_path):
    cohort = _cohort(tmp_path)
    predictions = tmp_path / "liver_pred"
    for entry in read_cohort(cohort):
        case = read_case(entry)
        prediction = np.zeros_like(case.liver)
        prediction[4, 16, 16] = 1
        write_image(prediction, case, predictions / f"{entry.case_id}.nii.gz")
    config = {"register": False, "roi_source": str(predictions)}
    cache_dir = preprocess.preprocess_cohort(cohort, tmp_path / "cache", config, progress=False)
    assert all(c.roi.sum() == 25 for c in cache.open_cohort(cache_dir))
    with pytest.raises(FileNotFoundError, match="roi_source"):
        preprocess.preprocess_cohort(cohort, tmp_path / "cache", {"register": False, "roi_source": str(tmp_path / "none")}, progress=False)
