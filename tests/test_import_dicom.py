"""paresseg-import-dicom on DICOM studies the tests write in the layout of TCIA's HCC-TACE-Seg."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_studies import Grid, Study, write_ct_series, write_seg

from paresseg_jax.data import dicom_import
from paresseg_jax.data.case import read_case
from paresseg_jax.data.layouts import read_cohort

PV_GRID = Grid(shape=(8, 32, 32), spacing=(0.8, 0.8, 2.5), origin=(-12.0, -20.0, 40.0))
# the arterial series is shifted by 3 columns and 2 slices: PV voxel (z, y, x) is ART voxel (z + 2, y, x - 3)
ART_GRID = Grid(shape=(8, 32, 32), spacing=(0.8, 0.8, 2.5), origin=(-9.6, -20.0, 35.0))
LEVEL = {"nc": 40, "art": 150, "pv": 100, "dl": 70}


def _hu(phase: str, grid: Grid, seed: int = 0) -> np.ndarray:
    return (LEVEL[phase] + np.random.default_rng(seed).integers(-20, 20, grid.shape)).astype(np.int16)


def _box(grid: Grid, z, y, x) -> np.ndarray:
    mask = np.zeros(grid.shape, np.uint8)
    mask[z, y, x] = 1
    return mask


LIVER = _box(PV_GRID, slice(1, 7), slice(4, 26), slice(5, 28))
MASS = _box(PV_GRID, slice(3, 5), slice(10, 15), slice(12, 18))
VEIN = _box(PV_GRID, slice(0, 8), slice(20, 23), slice(2, 5))
LIVER_WITHOUT_MASS = LIVER * (1 - MASS)  # drawn apart, as some SEGs do: the import joins them


def _art_to_pv(art_mask: np.ndarray) -> np.ndarray:
    pv = np.zeros(PV_GRID.shape, np.uint8)
    pv[:6, :, 3:] = art_mask[2:, :, :-3]
    return pv


def _write_studies(root: Path) -> dict:
    """Three patients: named series + a SEG on one of two PV recons; unnamed series timed; unnamed untimed."""
    (root / "LICENSE").parent.mkdir(parents=True)
    (root / "LICENSE").write_text("not DICOM")  # TCIA downloads carry such files beside the studies
    first = Study("HCC_001")
    write_ct_series(root, first, np.zeros((1, 32, 32), np.int16), Grid(shape=(1, 32, 32)), number=1,
                    description="Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct_series(root, first, _hu("nc", PV_GRID), PV_GRID, number=2, description="PRE LIVER", acquisition_time="100000")
    write_ct_series(root, first, _hu("art", ART_GRID), ART_GRID, number=3, description="LIVER 3 PHASE AP",
                    acquisition_time="100130")
    thick = Grid(shape=(10, 32, 32), spacing=(0.8, 0.8, 2.0), origin=PV_GRID.origin)
    write_ct_series(root, first, _hu("pv", thick), thick, number=4, description="PORTAL VENOUS 2.0",
                    acquisition_time="100210")
    pv_series = write_ct_series(root, first, _hu("pv", PV_GRID, seed=1), PV_GRID, number=5,
                                description="PORTAL VENOUS 2.5", acquisition_time="100210", slice_order=[3, 7, 1, 0, 2, 6, 5, 4])
    write_ct_series(root, first, _hu("dl", PV_GRID), PV_GRID, number=6, description="DELAYED 3 MIN",
                    acquisition_time="100500")
    write_seg(root, first, pv_series, {"Liver": LIVER_WITHOUT_MASS, "Mass": MASS, "Portal vein": VEIN})

    second = Study("HCC_002")
    art_liver = _box(ART_GRID, slice(2, 8), slice(5, 25), slice(4, 20))
    art_tumor = _box(ART_GRID, slice(4, 6), slice(8, 12), slice(6, 10))
    series = {}
    for number, (phase, time) in enumerate((("nc", "110000"), ("art", "110130"), ("pv", "110210"), ("dl", "110500")), 1):
        grid = ART_GRID if phase == "art" else PV_GRID
        series[phase] = write_ct_series(root, second, _hu(phase, grid, seed=2), grid, number=number,
                                        description=f"Recon {number}", acquisition_time=time)
    write_seg(root, second, series["art"], {"Liver": art_liver, "Tumor": art_tumor})

    third = Study("HCC_003")
    for number in (1, 2):
        write_ct_series(root, third, _hu("pv", PV_GRID), PV_GRID, number=number, description=f"Recon {number}",
                        acquisition_time=None)

    # the three contrast phases stored as one series (positions repeat), the SEG drawn on the second acquisition
    fourth = Study("HCC_004")
    write_ct_series(root, fourth, _hu("nc", PV_GRID, seed=4), PV_GRID, number=2, description="PRE LIVER",
                    acquisition_time="120000")
    uid = None
    for k, (phase, time) in enumerate((("art", "120130"), ("pv", "120210"), ("dl", "120500"))):
        folder = write_ct_series(root, fourth, _hu(phase, PV_GRID, seed=4), PV_GRID, number=103,
                                 description="LIVER 3 PHASE CAP", acquisition_time=time, series_uid=uid,
                                 acquisition_number=k + 1, first_instance=1 + k * PV_GRID.shape[0])
        uid = _series_uid(folder)
    necrosis = MASS * (np.arange(PV_GRID.shape[2]) >= 15)  # the mass's right part, as a segment of its own
    write_seg(root, fourth, folder, {"Liver": LIVER, "Mass": MASS - necrosis, "Necrosis": necrosis},
              first_instance=1 + PV_GRID.shape[0])
    return {"art_liver": art_liver, "art_tumor": art_tumor, "first_pv_folder": pv_series}


def _series_uid(folder: Path) -> str:
    import pydicom

    return pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID


def _import(*args) -> subprocess.CompletedProcess:
    """The console script as a user runs it."""
    script = Path(sys.executable).with_name("paresseg-import-dicom")
    return subprocess.run([str(script), *args], check=False, capture_output=True, encoding="utf-8", errors="replace", timeout=120,
                          env={**os.environ, "PARESSEG_HUGE_PAGES": "0"})


def test_import_tcia_layout_assigns_phases_and_reads_seg_masks_onto_pv(tmp_path):
    drawn = _write_studies(tmp_path / "HCC-TACE-Seg")
    result = _import("--input", str(tmp_path / "HCC-TACE-Seg"), "--output", str(tmp_path / "cohort"))
    assert result.returncode == 0, result.stderr
    assert "imported 3 of 4 studies" in result.stdout

    entries = read_cohort(tmp_path / "cohort")
    assert [e.case_id for e in entries] == ["HCC_001", "HCC_002", "HCC_004"]

    first = read_case(entries[0])
    assert sorted(first.phases) == ["art", "dl", "nc", "pv"]
    np.testing.assert_array_equal(first.phases["pv"], _hu("pv", PV_GRID, seed=1))  # recon #5: the one the SEG is on
    assert sitk.ReadImage(str(tmp_path / "cohort" / "HCC_001" / "pv.nii.gz")).GetPixelID() == sitk.sitkInt16  # as stored
    np.testing.assert_allclose(first.spacing, PV_GRID.spacing)
    np.testing.assert_allclose(first.origin, PV_GRID.origin)
    np.testing.assert_array_equal(first.liver, LIVER)  # liver segment joined with the mass
    np.testing.assert_array_equal(first.tumor, MASS)
    # ART was written in its own geometry; on the PV grid it is its shifted copy
    np.testing.assert_allclose(first.phases["art"][:6, :, 3:], _hu("art", ART_GRID)[2:, :, :-3], atol=1e-3)

    second = read_case(entries[1])
    np.testing.assert_array_equal(second.phases["pv"], _hu("pv", PV_GRID, seed=2))
    np.testing.assert_array_equal(second.phases["nc"], _hu("nc", PV_GRID, seed=2))
    np.testing.assert_array_equal(second.tumor, _art_to_pv(drawn["art_tumor"]))  # SEG drawn on ART, moved onto PV
    np.testing.assert_array_equal(second.liver, _art_to_pv(drawn["art_liver"]))

    fourth = read_case(entries[2])
    for phase in ("nc", "art", "pv", "dl"):
        np.testing.assert_array_equal(fourth.phases[phase], _hu(phase, PV_GRID, seed=4), err_msg=phase)
    np.testing.assert_array_equal(fourth.tumor, MASS)  # mass and necrosis
    np.testing.assert_array_equal(fourth.liver, LIVER)

    manifest = json.loads((tmp_path / "cohort" / "manifest.json").read_text())["cases"]
    assert manifest[0]["patient_id"] == "HCC_001" and set(manifest[0]["series"]) == set(LEVEL)
    assert manifest[0]["series"]["pv"]["folders"] == [str(drawn["first_pv_folder"].absolute())]  # for a DICOM-SEG
    report = {c["patient_id"]: c for c in json.loads((tmp_path / "cohort" / "import_report.json").read_text())["cases"]}
    assert report["HCC_001"]["phases"]["pv"]["series"].startswith("#5")
    assert "#1 'Topogram'" in report["HCC_001"]["unassigned_series"]
    assert "#4 'PORTAL VENOUS 2.0'" in report["HCC_001"]["unassigned_series"]
    assert any("'Portal vein' left out" in note for note in report["HCC_001"]["notes"])
    assert any("assigned pv by acquisition time" in note for note in report["HCC_002"]["notes"])
    assert any("SEG drawn on series [\"#2 'Recon 2'\"], not on PV" in note for note in report["HCC_002"]["notes"])
    assert report["HCC_003"]["imported"] is None and not (tmp_path / "cohort" / "HCC_003").exists()
    assert "HCC_003 (not imported)" in result.stdout and "no portal-venous series" in result.stdout


def test_keyword_and_segment_label_overrides(tmp_path):
    study = Study("P7")
    pv = write_ct_series(tmp_path / "in", study, _hu("pv", PV_GRID), PV_GRID, number=1, description="Phase B",
                         acquisition_time="090100")
    write_ct_series(tmp_path / "in", study, _hu("art", PV_GRID), PV_GRID, number=2, description="Phase A",
                    acquisition_time="090000")
    write_seg(tmp_path / "in", study, pv, {"Liver": LIVER, "GTV": MASS})

    default = _import("--input", str(tmp_path / "in"), "--output", str(tmp_path / "default"))
    assert default.returncode == 0 and "imported 0 of 1 studies" in default.stdout  # two unnamed series, four phases

    result = _import("--input", str(tmp_path / "in"), "--output", str(tmp_path / "cohort"), "--phase_keyword=pv=phase b",
                     "--phase_keyword=art=Phase A", "--segment_label=tumor=gtv")
    assert result.returncode == 0, result.stderr
    case = read_case(read_cohort(tmp_path / "cohort")[0])
    np.testing.assert_array_equal(case.phases["art"], _hu("art", PV_GRID))
    np.testing.assert_array_equal(case.tumor, MASS)


@pytest.mark.parametrize("flag, status, message", [
    ("--phase_keyword=portal", 1, "expected NAME=PHRASE"),
    ("--phase_keyword=venous=portal", 2, "phase keywords given for unknown phases ['venous']"),
])
def test_bad_keyword_flags_are_one_line_errors(tmp_path, flag, status, message):
    (tmp_path / "in").mkdir()
    result = _import("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), flag)
    assert result.returncode == status and message in result.stderr, result.stderr
    if status == 2:  # our own errors: one line, no traceback
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_series_left_open_by_descriptions_take_free_phases_only_in_time_order():
    def series(uid, description, time_s):
        slices = [dicom_import.Slice(Path(f"{uid}{k}"), f"{uid}{k}", float(k), None, time_s, k) for k in range(5)]
        return dicom_import.Series(uid, "CT", description, None, (), slices)

    # ART named by description at t=100; the unnamed series at t=50 and t=200 can only be nc, pv, dl in order
    chosen, notes = dicom_import.assign_phases(
        [series("a", "ARTERIAL", 100), series("b", "x", 50), series("c", "y", 200), series("d", "z", 400)])
    assert {p: s.uid for p, s in chosen.items()} == {"art": "a", "nc": "b", "pv": "c", "dl": "d"}
    # the same unnamed series, but the one taken before ART would come after it: nothing is guessed
    chosen, notes = dicom_import.assign_phases(
        [series("a", "ARTERIAL", 100), series("b", "x", 150), series("c", "y", 200), series("d", "z", 400)])
    assert {p: s.uid for p, s in chosen.items()} == {"art": "a"}
    assert "contradicts" in notes[-1]


def test_a_study_that_cannot_be_read_is_reported_and_the_others_imported(tmp_path):
    good, bad = Study("P1"), Study("P2")
    write_ct_series(tmp_path / "in", good, _hu("pv", PV_GRID), PV_GRID, number=1, description="PORTAL VENOUS")
    folder = write_ct_series(tmp_path / "in", bad, _hu("pv", PV_GRID), PV_GRID, number=1, description="PORTAL VENOUS")
    small = Grid(shape=(1, 16, 16), origin=(-12.0, -20.0, 60.0))  # one more slice of another size in the series
    write_ct_series(tmp_path / "in", bad, np.zeros(small.shape, np.int16), small, number=1, description="PORTAL VENOUS",
                    series_uid=_series_uid(folder), first_instance=9)
    report = dicom_import.import_dicom(tmp_path / "in", tmp_path / "cohort", progress=False)
    assert report["imported"] == 1 and [e.case_id for e in read_cohort(tmp_path / "cohort")] == ["P1"]
    (failed,) = [c for c in report["cases"] if c["patient_id"] == "P2"]
    assert failed["imported"] is None and "different sizes [(16, 16), (32, 32)]" in failed["notes"][-1], failed
    assert not (tmp_path / "cohort" / "P2").exists()
    # P1 has no SEG: a training cohort leaves it out
    report = dicom_import.import_dicom(tmp_path / "in", tmp_path / "training", require_seg=True, progress=False)
    assert report["imported"] == 0 and "no DICOM-SEG" in report["cases"][0]["notes"][-1]
