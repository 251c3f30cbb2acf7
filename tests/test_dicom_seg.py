"""DICOM-SEG writer: read back with pydicom/highdicom, frames checked against the source series the test wrote."""

import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_studies import Grid, Study, write_ct_series

from paresseg_jax.data.case import read_case
from paresseg_jax.data.images import read_image
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import PareSegError
from paresseg_jax.infer.dicom_seg import write_dicom_seg

# an oblique series (rotated 30 degrees about the patient's z axis), slices stored in shuffled file order
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
GRID = Grid(shape=(8, 32, 24), spacing=(0.7, 0.9, 3.0), origin=(-10.0, 5.0, 100.0), row=(_C, _S, 0.0),
            column=(-_S, _C, 0.0))
FILE_ORDER = [5, 0, 7, 2, 1, 6, 3, 4]


def _labels() -> np.ndarray:
    """Liver on slices 1..6, a tumor on slices 3..4; each slice's liver a different size so slice mix-ups show."""
    labels = np.zeros(GRID.shape, np.uint8)
    for z in range(1, 7):
        labels[z, 4:10 + 2 * z, 3:18] = 1
    labels[3:5, 6:10, 5:9] = 2
    return labels


@pytest.fixture
def pv_series(tmp_path):
    hu = np.random.default_rng(0).integers(-100, 200, GRID.shape).astype(np.int16)
    return write_ct_series(tmp_path / "dicom", Study(), hu, GRID, number=5, description="PORTAL VENOUS",
                           slice_order=FILE_ORDER)


def _label_image(labels, series):
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(read_image(series))
    return image


def test_seg_frames_are_the_source_slices_with_their_geometry(tmp_path, pv_series):
    labels = _labels()
    out = write_dicom_seg(_label_image(labels, pv_series), pv_series, tmp_path / "out" / "seg.dcm")
    seg = pydicom.dcmread(out)
    sources = {d.SOPInstanceUID: d for d in map(pydicom.dcmread, sorted(pv_series.iterdir()))}
    first = next(iter(sources.values()))

    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID and seg.StudyInstanceUID == first.StudyInstanceUID
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced_series.ReferencedInstanceSequence} == set(sources)

    liver, tumor = seg.SegmentSequence
    assert (liver.SegmentNumber, liver.SegmentLabel, tumor.SegmentNumber, tumor.SegmentLabel) == (1, "Liver", 2, "Tumor")
    codes = [(s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]) for s in (liver, tumor)]
    assert [(c.CodingSchemeDesignator, c.CodeValue, t.CodingSchemeDesignator, t.CodeValue) for c, t in codes] == [
        ("SCT", "91723000", "SCT", "10200004"),  # anatomical structure / liver
        ("SCT", "49755003", "SCT", "108369006"),  # morphologically abnormal structure / neoplasm
    ]

    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               first.ImageOrientationPatient, atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing, atol=1e-6)
    frames = seg.pixel_array.reshape(-1, *GRID.shape[1:])
    expected = {1: labels >= 1, 2: labels == 2}
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[source_uid]
        z = int(source.InstanceNumber) - 1  # the test wrote slice z as instance z + 1
        np.testing.assert_allclose(group.PlanePositionSequence[0].ImagePositionPatient, GRID.position(z), atol=1e-4)
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(frame, expected[segment][z])
        seen.add((segment, z))
    # empty frames are left out: every slice with liver or tumor is there, no other
    assert seen == {(s, z) for s, mask in expected.items() for z in range(GRID.shape[0]) if mask[z].any()}


def test_seg_reads_back_with_highdicom_onto_the_pv_grid(tmp_path, pv_series):
    import highdicom as hd

    labels = _labels()
    out = write_dicom_seg(_label_image(labels, pv_series), pv_series, tmp_path / "seg.dcm")
    volume = hd.seg.segread(out).get_volume(combine_segments=False)
    pv = read_image(pv_series)
    for channel, expected in ((0, labels >= 1), (1, labels == 2)):
        corners = volume.affine @ np.array([[k, 0, 0, 1] for k in range(volume.array.shape[0])]).T  # slices' first pixels
        indices = [pv.TransformPhysicalPointToIndex(tuple(p[:3])) for p in corners.T]
        for k, (x, y, slice_index) in enumerate(indices):
            assert (x, y) == (0, 0)
            np.testing.assert_array_equal(volume.array[k, :, :, channel], expected[slice_index])


def test_empty_label_map_is_a_valid_seg(tmp_path, pv_series):
    out = write_dicom_seg(_label_image(np.zeros(GRID.shape, np.uint8), pv_series), pv_series, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert seg.NumberOfFrames >= 1 and not seg.pixel_array.any()


def test_label_map_off_the_series_grid_is_refused(tmp_path, pv_series):
    image = _label_image(_labels(), pv_series)
    image.SetSpacing((0.7, 0.9, 2.0))
    with pytest.raises(PareSegError, match="does not lie on the label map's grid"):
        write_dicom_seg(image, pv_series, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_labels_other_than_0_1_2_are_refused(tmp_path, pv_series):
    labels = _labels()
    labels[0, 0, 0] = 3
    with pytest.raises(PareSegError, match="0 background, 1 liver, 2 tumor"):
        write_dicom_seg(_label_image(labels, pv_series), pv_series, tmp_path / "seg.dcm")


def test_without_highdicom_the_error_says_what_to_install(tmp_path, pv_series, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    with pytest.raises(PareSegError, match=r"pip install 'paresseg_jax\[dicom\]'"):
        write_dicom_seg(_label_image(_labels(), pv_series), pv_series, tmp_path / "seg.dcm")


def test_seg_round_trips_through_the_importer(tmp_path, pv_series):
    """What PACS gets back from us, paresseg-import-dicom turns into the same masks (labels 'Liver', 'Tumor')."""
    from paresseg_jax.data import dicom_import

    labels = _labels()
    study_folder = pv_series.parent
    write_dicom_seg(_label_image(labels, pv_series), pv_series, study_folder / "900-PA-ResSeg" / "seg.dcm")
    report = dicom_import.import_dicom(tmp_path / "dicom", tmp_path / "cohort", progress=False)
    assert report["imported"] == 1, report
    case = read_case(read_cohort(tmp_path / "cohort")[0])
    np.testing.assert_array_equal(case.liver, labels >= 1)
    np.testing.assert_array_equal(case.tumor, labels == 2)


def test_a_folder_holding_several_acquisitions_is_refused(tmp_path, pv_series):
    """Two acquisitions of one series at the same positions: which slices the label map belongs to is unknown."""
    study = Study()
    hu = np.zeros(GRID.shape, np.int16)
    folder = write_ct_series(tmp_path / "multi", study, hu, GRID, number=3, description="LIVER 3 PHASE")
    uid = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    write_ct_series(tmp_path / "multi", study, hu, GRID, number=3, description="LIVER 3 PHASE", series_uid=uid,
                    acquisition_number=2, first_instance=1 + GRID.shape[0])
    with pytest.raises(PareSegError, match="several acquisitions"):
        write_dicom_seg(_label_image(_labels(), pv_series), folder, tmp_path / "seg.dcm")


def test_slice_positions_rounded_by_the_scanner_still_match(tmp_path):
    """0.625 mm slices with positions written to 0.01 mm: slice k is up to 0.008 voxel off the regular grid."""
    grid = Grid(shape=(8, 32, 24), spacing=(0.7, 0.7, 0.625), origin=(-10.003, 5.0, 100.0))
    series = write_ct_series(tmp_path / "dicom", Study(), np.zeros(grid.shape, np.int16), grid, number=2,
                             description="PV", position_decimals=2)
    labels = np.zeros(grid.shape, np.uint8)
    labels[2:6, 4:20, 4:20] = 1
    labels[3, 8:12, 8:12] = 2
    seg = pydicom.dcmread(write_dicom_seg(_label_image(labels, series), series, tmp_path / "seg.dcm"))
    sources = {d.SOPInstanceUID: int(d.InstanceNumber) - 1 for d in map(pydicom.dcmread, series.iterdir())}
    for frame, group in zip(seg.pixel_array.reshape(-1, *grid.shape[1:]), seg.PerFrameFunctionalGroupsSequence):
        z = sources[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(frame, labels[z] >= 1 if segment == 1 else labels[z] == 2)


def _edit_headers(folder, edit):
    """Rewrite every slice of a series with ``edit(dataset)`` applied, as a real export might have left it."""
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        edit(dataset)
        dataset.save_as(path)


@pytest.mark.parametrize("attribute", ["SOPClassUID", "SOPInstanceUID", "StudyID", "AccessionNumber", "PatientName",
                                       "ReferringPhysicianName"])
@pytest.mark.parametrize("how", ["empty", "absent"])
def test_headers_left_blank_are_completed(tmp_path, pv_series, attribute, how):
    """SOP class and instance from the file meta; type 2 study and patient attributes present and empty."""
    import highdicom as hd

    metas = {p.name: pydicom.dcmread(p).file_meta for p in pv_series.iterdir()}
    _edit_headers(pv_series, lambda d: setattr(d, attribute, None) if how == "empty" else delattr(d, attribute))
    out = write_dicom_seg(_label_image(_labels(), pv_series), pv_series, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    (series,) = seg.ReferencedSeriesSequence
    assert {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedInstanceSequence} == {
        (m.MediaStorageSOPClassUID, m.MediaStorageSOPInstanceUID) for m in metas.values()}
    for name in ("StudyID", "AccessionNumber", "PatientName", "ReferringPhysicianName"):
        assert name in seg and (seg.get(name) in ("", None)) == (name == attribute or name in (
            "AccessionNumber", "ReferringPhysicianName"))  # the test series leaves these two empty already


def test_headers_without_a_source_are_refused_before_any_work(tmp_path, pv_series, monkeypatch):
    from test_infer_study import save_tiny_model

    from paresseg_jax.infer import study

    model = save_tiny_model(tmp_path / "model")
    art = tmp_path / "art.nii.gz"
    sitk.WriteImage(read_image(pv_series), str(art))
    monkeypatch.setattr(study.Segmenter, "load", lambda *a, **k: pytest.fail("models loaded before the check"))
    _edit_headers(pv_series, lambda d: setattr(d, "FrameOfReferenceUID", ""))
    with pytest.raises(PareSegError, match=r"FrameOfReferenceUID is empty or missing in 1-0\d.dcm; a DICOM-SEG"):
        study.predict_files({"pv": pv_series, "art": art}, model, None, dicom_seg_out=tmp_path / "seg.dcm")

    def without_class(dataset):
        del dataset.SOPClassUID
        del dataset.file_meta.MediaStorageSOPClassUID

    _edit_headers(pv_series, without_class)
    with pytest.raises(PareSegError, match=r"SOPClassUID is empty or missing in 1-0\d.dcm or its file meta"):
        study.check_dicom_series(pv_series, "a DICOM-SEG")
    assert not (tmp_path / "seg.dcm").exists()
