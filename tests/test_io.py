"""CT I/O: round trips keep values and geometry; layouts; resampling onto PV; clear errors."""

import dataclasses
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax.data.case import Case, read_case, write_case
from paresseg_jax.data.images import Geometry, image_array, read_image, write_image
from paresseg_jax.data.layouts import CaseEntry, read_cohort, write_manifest
from paresseg_jax.errors import BadInputError, MissingInputError

SPACING = (0.75, 0.8, 5.0)
ORIGIN = (-120.5, 33.0, 210.0)
ANGLE = np.deg2rad(10)
DIRECTION = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)


def _case(shape=(6, 20, 24), seed=0, geometry=(SPACING, ORIGIN, DIRECTION)):
    rng = np.random.default_rng(seed)
    liver = np.zeros(shape, np.uint8)
    liver[1:5, 4:16, 5:20] = 1
    tumor = np.zeros(shape, np.uint8)
    tumor[2:4, 7:11, 8:12] = 1
    phases = {p: rng.uniform(-1000, 1000, shape).astype(np.float32) for p in ("pv", "art")}
    meta = {"case_id": "c0", "tumor_type": "HCC", "scanner": "scanner_5mm"}
    return Case(phases, liver, tumor, *geometry, meta)


def _assert_geometry(image_or_case, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    g = Geometry.of(image_or_case)
    np.testing.assert_allclose(g.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(g.origin, origin, atol=1e-4)
    np.testing.assert_allclose(g.direction, direction, atol=1e-6)


def test_nifti_case_round_trip_keeps_values_and_geometry(tmp_path):
    case = _case()
    write_case(case, tmp_path / "c0")
    back = read_case(tmp_path / "c0")
    assert list(back.phases) == ["pv", "art"]
    for name in case.phases:
        np.testing.assert_array_equal(back.phases[name], case.phases[name])
        assert back.phases[name].dtype == np.float32
    np.testing.assert_array_equal(back.liver, case.liver)
    np.testing.assert_array_equal(back.tumor, case.tumor)
    assert back.liver.dtype == np.uint8
    _assert_geometry(back)
    assert back.spacing_zyx == pytest.approx(tuple(reversed(SPACING)))
    _assert_geometry(sitk.ReadImage(str(tmp_path / "c0" / "tumor.nii.gz")))


def test_write_image_takes_geometry_from_cache_meta(tmp_path):
    meta = {"spacing": list(SPACING), "origin": list(ORIGIN), "direction": list(DIRECTION)}
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    path = write_image(mask, meta, tmp_path / "m.nii.gz")
    image = sitk.ReadImage(str(path))
    _assert_geometry(image)
    assert sitk.GetArrayFromImage(image)[1, 2, 3] == 1 and sitk.GetArrayFromImage(image).sum() == 1


def _write_dicom_series(volume_hu: np.ndarray, folder, spacing, origin):
    """A CT series written slice by slice by SimpleITK (int16 with rescale tags), as a scanner would."""
    folder.mkdir()
    image = sitk.GetImageFromArray(volume_hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.4f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_round_trip_keeps_values_and_geometry(tmp_path):
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 1500, size=(5, 16, 18)).astype(np.int16)
    spacing, origin = (0.7, 0.7, 2.5), (-50.0, -60.0, 100.0)
    _write_dicom_series(volume, tmp_path / "pv", spacing, origin)
    image = read_image(tmp_path / "pv")
    np.testing.assert_array_equal(image_array(image, tmp_path / "pv"), volume.astype(np.float32))
    _assert_geometry(image, spacing, origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    # a DICOM folder also works as a phase of a case folder
    write = _case(shape=(5, 16, 18), geometry=(spacing, origin, (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    write_image(write.liver, write, tmp_path / "liver.nii.gz")
    case = read_case(tmp_path)
    np.testing.assert_array_equal(case.phases["pv"], volume)
    np.testing.assert_array_equal(case.liver, write.liver)


def test_phase_on_another_grid_is_resampled_onto_pv(tmp_path):
    # ART on a coarser, shifted grid holds a linear ramp in physical x: linear resampling is exact for it
    pv = _case(geometry=((2.0, 2.0, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    write_image(pv.phases["pv"], pv, tmp_path / "c" / "pv.nii.gz")
    art_spacing, art_origin, art_shape = (3.0, 3.0, 6.0), (-7.0, -5.0, -9.0), (8, 20, 22)
    x_mm = art_origin[0] + np.arange(art_shape[2]) * art_spacing[0]
    ramp = np.broadcast_to(10.0 + 2.0 * x_mm, art_shape).astype(np.float32)
    art_geometry = Geometry(art_spacing, art_origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(ramp, art_geometry, tmp_path / "c" / "art.nii.gz")
    case = read_case(tmp_path / "c")
    assert case.phases["art"].shape == pv.shape
    expected = np.broadcast_to(10.0 + 2.0 * (np.arange(pv.shape[2]) * 2.0), pv.shape)
    np.testing.assert_allclose(case.phases["art"], expected, atol=1e-3)


def test_lits_layout_maps_labels_and_is_single_phase(tmp_path):
    case = _case()
    labels = (case.liver + case.tumor).astype(np.uint8)  # 0 background, 1 liver, 2 tumor
    write_image(case.phases["pv"], case, tmp_path / "volume-3.nii")
    write_image(labels, case, tmp_path / "segmentation-3.nii")
    write_image(case.phases["pv"], case, tmp_path / "volume-10.nii")
    write_image(np.zeros_like(labels), case, tmp_path / "segmentation-10.nii")
    entries = read_cohort(tmp_path)
    assert [e.case_id for e in entries] == ["lits-3", "lits-10"]
    read = read_case(entries[0])
    assert list(read.phases) == ["pv"]
    np.testing.assert_array_equal(read.liver, (labels >= 1).astype(np.uint8))
    np.testing.assert_array_equal(read.tumor, (labels == 2).astype(np.uint8))
    healthy = read_case(entries[1])  # an empty tumor mask is a valid case
    assert healthy.tumor.sum() == 0


def test_manifest_with_arbitrary_files_and_metadata(tmp_path):
    case = _case()
    write_image(case.phases["pv"], case, tmp_path / "scans" / "a_portal.mha")
    write_image(case.phases["art"], case, tmp_path / "scans" / "a_arterial.nrrd")
    labels = (case.liver * 4 + case.tumor * 3).astype(np.uint8)  # liver 4, tumor 7
    write_image(labels, case, tmp_path / "labels" / "a.nii.gz")
    write_case(case, tmp_path / "b")
    records = [
        {"case_id": "a", "tumor_type": "FNH", "scanner": "x", "split": "fold-0",
         "phases": {"pv": "scans/a_portal.mha", "art": "scans/a_arterial.nrrd"},
         "segmentation": "labels/a.nii.gz", "liver_labels": [4, 7], "tumor_labels": [7]},
        {"case_id": "b", "tumor_type": "HCC", "scanner": "y", "split": "fold-1"},
    ]
    write_manifest(tmp_path, records)
    entries = read_cohort(tmp_path)
    a, b = (read_case(e) for e in entries)
    np.testing.assert_array_equal(a.phases["art"], case.phases["art"])
    np.testing.assert_array_equal(a.liver, case.liver)
    np.testing.assert_array_equal(a.tumor, case.tumor)
    assert a.metadata == {"case_id": "a", "tumor_type": "FNH", "scanner": "x", "split": "fold-0"}
    assert b.metadata["tumor_type"] == "HCC" and b.metadata["split"] == "fold-1"
    # reading a case folder directly finds its metadata in the manifest beside it
    assert read_case(tmp_path / "b").metadata["scanner"] == "y"


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="no pv image"):
        read_case(tmp_path / "c")


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "pv.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="pv.nii.gz: cannot read image"):
        read_image(bad)


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(ValueError, match="flat.nii.gz: image is 2D"):
        read_image(tmp_path / "flat.nii.gz")


def test_unexpected_mask_labels_say_how_to_map_them(tmp_path):
    case = _case()
    write_case(case, tmp_path / "c")
    write_image(case.liver + case.tumor, case, tmp_path / "c" / "tumor.nii.gz")
    with pytest.raises(ValueError, match=r"tumor.nii.gz: tumor mask has labels \[0, 1, 2\].*liver_labels"):
        read_case(tmp_path / "c")


def test_unlisted_segmentation_label_is_an_error(tmp_path):
    case = _case()
    write_image(case.phases["pv"], case, tmp_path / "pv.nii.gz")
    write_image(case.liver * 5, case, tmp_path / "seg.nii.gz")
    entry = CaseEntry("x", {"pv": tmp_path / "pv.nii.gz"}, segmentation=tmp_path / "seg.nii.gz", liver_labels=(1,))
    with pytest.raises(ValueError, match=r"labels \[5\]"):
        read_case(entry)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_voxels_are_refused_in_every_format(tmp_path, suffix):
    case = _case()
    case.phases["art"][2, 3, 4] = np.nan
    case.phases["art"][2, 3, 5] = np.inf
    write_case(case, tmp_path / "c")
    (tmp_path / "c" / "art.nii.gz").unlink()
    write_image(case.phases["art"], case, tmp_path / "c" / f"art{suffix}")  # SimpleITK reads NIfTI NaN as 0
    with pytest.raises(BadInputError, match=f"art{re.escape(suffix)}: image has 2 NaN or infinite"):
        read_case(tmp_path / "c")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_image_is_refused_in_every_format(tmp_path, suffix):
    """SimpleITK read a NIfTI cut in half (gzipped or not) as a volume whose missing slices are 0."""
    case = _case(shape=(12, 40, 48))
    path = write_image(case.phases["pv"], case, tmp_path / f"pv{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadInputError, match=f"pv{re.escape(suffix)}: "):
        read_image(path)


def test_nifti_voxels_and_geometry_read_as_simpleitk_reads_them(tmp_path):
    """nibabel's voxels put on SimpleITK's header geometry: the same image SimpleITK reads, for a flipped,
    rotated affine written by nibabel itself and for a 4D file with one volume."""
    import nibabel

    volume = np.random.default_rng(1).normal(size=(7, 9, 5)).astype(np.float32)  # nibabel (x, y, z)
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -3], [0, 0, -2.5, 40], [0, 0, 0, 1]], float)
    for name, data in (("a.nii.gz", volume), ("b.nii", volume[..., None])):
        nibabel.save(nibabel.Nifti1Image(data, affine), tmp_path / name)
        expected = sitk.ReadImage(str(tmp_path / name))
        expected = expected[:, :, :, 0] if expected.GetDimension() == 4 else expected
        got = read_image(tmp_path / name)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected))
        _assert_geometry(got, expected.GetSpacing(), expected.GetOrigin(), expected.GetDirection())


def _mask_on_another_grid(tmp_path):
    case = _case()
    write_case(case, tmp_path / "c")
    shifted = Geometry(SPACING, tuple(np.add(ORIGIN, (1.5, 0.0, 0.0))), DIRECTION)
    write_image(case.tumor, shifted, tmp_path / "c" / "tumor.nii.gz")
    return case


def test_mask_on_another_grid_is_refused_unless_resampling_is_asked_for(tmp_path):
    _mask_on_another_grid(tmp_path)
    with pytest.raises(BadInputError, match=r"tumor.nii.gz: tumor mask is on another grid.*--resample_masks"):
        read_case(tmp_path / "c")
    entry = read_cohort(tmp_path)[0]
    assert read_case(dataclasses.replace(entry, resample_masks=True)).tumor.sum() > 0
    (tmp_path / "manifest.json").write_text(json.dumps({"resample_masks": True, "cases": [{"case_id": "c"}]}))
    assert read_case(read_cohort(tmp_path)[0]).tumor.sum() > 0


def test_phase_covering_pv_partly_is_reported_then_refused(tmp_path, caplog):
    case = _case(geometry=((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    write_image(case.phases["pv"], case, tmp_path / "c" / "pv.nii.gz")
    # ART shifted by 30% of PV's x extent (24 mm): it covers 70% of PV
    write_image(case.phases["art"], Geometry((1.0, 1.0, 1.0), (7.2, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                   tmp_path / "c" / "art.nii.gz")
    with caplog.at_level("WARNING"):
        read_case(tmp_path / "c")
    assert "art.nii.gz covers 70.0% of the PV image's extent" in caplog.text
    write_image(case.phases["art"], Geometry((1.0, 1.0, 1.0), (22.8, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                   tmp_path / "c" / "art.nii.gz")
    with pytest.raises(BadInputError, match="art.nii.gz: image covers only 5% of the PV image's extent"):
        read_case(tmp_path / "c")


def test_phase_without_physical_overlap_is_refused(tmp_path):
    case = _case()
    write_image(case.phases["pv"], case, tmp_path / "c" / "pv.nii.gz")
    far = Geometry(SPACING, (5000.0, 0.0, 0.0), DIRECTION)
    write_image(case.phases["art"], far, tmp_path / "c" / "art.nii.gz")
    with pytest.raises(ValueError, match="art.nii.gz: image .* does not overlap the PV image"):
        read_case(tmp_path / "c")


def test_empty_cohort_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no cases found"):
        read_cohort(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cohort(tmp_path / "missing")


def test_bad_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": [{"tumor_type": "HCC"}]}))
    with pytest.raises(ValueError, match="no \"case_id\""):
        read_cohort(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: manifest is not valid JSON"):
        read_cohort(tmp_path)
    for content in ({"cases": None}, [], {"cases": [1]}):
        (tmp_path / "manifest.json").write_text(json.dumps(content))
        with pytest.raises(BadInputError, match='manifest.json: manifest has no list of case records under "cases"'):
            read_cohort(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "a", "phases": {"pv": "a/pv.nii.gz"}}]}))
    with pytest.raises(MissingInputError, match=r"manifest.json: case 'a' names .*a/pv.nii.gz, which does not exist"):
        read_cohort(tmp_path)
