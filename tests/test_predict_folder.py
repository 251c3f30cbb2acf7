"""paresseg-predict on a folder of studies, ensembles, phases by name, and the notebook API `infer.segment`.

The console scripts run in subprocesses on cohorts and models the tests
write; expected label maps are rebuilt here from `predict_volume` and numpy.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage
from dicom_studies import Grid, Study, write_ct_series
from test_infer_study import check_stage_times, save_tiny_model

from paresseg_jax import absent_phases, model_io
from paresseg_jax.data import preprocess
from paresseg_jax.data.case import Case, write_case
from paresseg_jax.data.images import Geometry, read_image, write_image
from paresseg_jax.errors import PareSegError
from paresseg_jax.infer import ensemble, folder, predict, study
from paresseg_jax.metrics import case_metrics

pytestmark = pytest.mark.xdist_group("predict_folder")  # the module's saved models and predictions are built once

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GEOMETRY = Geometry((0.7, 0.8, 5.0), (120.5, -80.25, 30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
# case id -> (z, y, x) shape, has a tumor mask; the sizes differ but pad to one shape (32 x 64): one compilation.
CASES = {"case_0": ((5, 30, 34), True), "case_1": ((4, 28, 40), True), "case_2": ((5, 30, 34), False)}


def _case(case_id, shape, with_tumor, seed, phases=("pv", "art")):
    rng = np.random.default_rng(seed)
    images = {p: rng.uniform(-100, 250, shape).astype(np.float32) for p in phases}
    liver = np.zeros(shape, np.uint8)
    liver[1:-1, 6:-6, 5:-5] = 1
    tumor = np.zeros(shape, np.uint8)
    tumor[2, 10:15, 10:16] = 1
    meta = {"case_id": case_id, "tumor_type": "HCC", "scanner": None}
    return Case(images, liver, tumor if with_tumor else None, GEOMETRY.spacing, GEOMETRY.origin,
                   GEOMETRY.direction, meta)


def write_cohort(root, layout=CASES):
    """A folder of case folders in our layout (no manifest: a plain folder of studies)."""
    cases = {}
    for k, (case_id, (shape, with_tumor)) in enumerate(layout.items()):
        cases[case_id] = _case(case_id, shape, with_tumor, k)
        write_case(cases[case_id], root / case_id)
    return cases


def run_script(name, *args):
    env = {**os.environ, "PARESSEG_HUGE_PAGES": "0"}
    return subprocess.run([str(BIN / name), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [save_tiny_model(root / f"model_{seed}", seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, two_models):
    """paresseg-predict run once on a folder of three studies with a two-model ensemble."""
    root = tmp_path_factory.mktemp("folder")
    cases = write_cohort(root / "cohort")
    out = root / "out"
    done = run_script("paresseg-predict", f"--input={root / 'cohort'}", f"--output={out}", f"--model={two_models[0]}",
                      f"--model={two_models[1]}", "--save_probabilities", "--threshold=0.5", "--noregister",
                      "--batch_size=2", "--overlays")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, cases, out, done


def _expected(case, model_dirs, threshold=0.5):
    """Mean of each model's probability inside the given liver's ROI, and its LiTS label map, computed here."""
    images = {p: preprocess.hu_window(v) for p, v in case.phases.items()}
    roi = preprocess.liver_roi(case.liver)
    probs = [predict.predict_volume(*model_io.load_model(d)[:2], images, roi, batch_size=2) for d in model_dirs]
    prob = np.mean(probs, axis=0)
    labels = np.where(prob > threshold, 2, np.where(case.liver > 0, 1, 0)).astype(np.uint8)
    return prob, labels


def test_folder_writes_lits_label_maps_in_pv_geometry(predicted, two_models):
    _, cases, out, _ = predicted
    for case_id, case in cases.items():
        written = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
        assert written.GetPixelID() == sitk.sitkUInt8 and written.GetSize() == case.shape[::-1]
        np.testing.assert_allclose(written.GetSpacing(), GEOMETRY.spacing, atol=1e-4)
        np.testing.assert_allclose(written.GetOrigin(), GEOMETRY.origin, atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), GEOMETRY.direction, atol=1e-4)
        labels = sitk.GetArrayFromImage(written)
        prob = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}_tumor_prob.nii.gz")))
        expected_prob, expected_labels = _expected(case, two_models)
        np.testing.assert_allclose(prob, expected_prob, atol=1e-5)
        decided = np.abs(expected_prob - 0.5) > 1e-4  # voxels not on the threshold within float rounding
        np.testing.assert_array_equal(labels[decided], expected_labels[decided])
        assert set(np.unique(labels)) == {0, 1, 2}


def test_folder_summary_scores_the_cases_with_masks(predicted):
    _, cases, out, done = predicted
    summary = json.loads((out / "summary.json").read_text())
    records = {r["case_id"]: r for r in summary["cases"]}
    assert set(records) == set(CASES)
    assert "metrics" not in records["case_2"] and records["case_2"]["roi"] == "liver mask"
    for case_id in ("case_0", "case_1"):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}.nii.gz")))
        expected = case_metrics(labels == 2, cases[case_id].tumor, cases[case_id].spacing_zyx)
        assert records[case_id]["metrics"] == pytest.approx(expected)
    assert summary["summary"]["all"]["n_cases"] == 2 and summary["info"]["labels"]["tumor"] == 2
    assert len(summary["info"]["models"]) == 2
    lines = done.stdout.splitlines()
    for case_id in CASES:  # one line per case at the end
        assert sum(line.startswith(case_id + " ") for line in lines) == 1
    assert "tumor DPC" in done.stdout


def test_folder_records_each_cases_stages(predicted):
    """Every case's record times its stages (no registration, liver model or postprocessing here: listed as not
    run), and its printed line gives them."""
    _, _, out, done = predicted
    records = json.loads((out / "summary.json").read_text())["cases"]
    for record in records:
        check_stage_times(record["stage_times"], record["seconds"],
                          ran=["reading", "windowing", "tumor", "compilation", "measuring", "writing"])
        line = next(line for line in done.stdout.splitlines() if line.startswith(record["case_id"] + " "))
        assert re.search(r"reading [0-9.]+ s, windowing [0-9.]+ s, tumor [0-9.]+ s, compilation [0-9.]+ s", line)


def test_folder_lists_every_lesion_in_lesions_csv_and_summary(predicted):
    """lesions.csv and summary.json against the written label maps and the cases' HU, measured here with numpy."""
    _, cases, out, _ = predicted
    with open(out / "lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = {r["case_id"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    voxel_ml = float(np.prod(GEOMETRY.spacing)) / 1000
    for case_id, case in cases.items():
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}.nii.gz")))
        components, count = ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.ravel())[1:]
        ours = [r for r in rows if r["case_id"] == case_id]
        assert len(ours) == count == summary[case_id]["lesions"]["count"]
        assert [float(r["volume_ml"]) for r in ours] == pytest.approx(sorted(sizes * voxel_ml, reverse=True), abs=0.006)
        biggest = components == 1 + int(np.argmax(sizes))
        assert float(ours[0]["pv_hu_mean"]) == pytest.approx(case.phases["pv"][biggest].mean(), abs=0.006)
        assert float(ours[0]["art_hu_sd"]) == pytest.approx(case.phases["art"][biggest].std(), abs=0.006)
        organ = np.count_nonzero(labels > 0)
        burden = summary[case_id]["lesions"]["tumor_burden_pct"]
        assert burden == pytest.approx(100 * np.count_nonzero(labels == 2) / organ)
        assert [lesion["lesion"] for lesion in summary[case_id]["lesions"]["lesions"]] == list(range(1, count + 1))


def test_folder_overlays_and_markdown_report(predicted):
    """--overlays: one PNG per case, PV and ART side by side per lesion row; report.md: a row per lesion of
    lesions.csv, the overlays linked."""
    import matplotlib.image

    _, cases, out, _ = predicted
    with open(out / "lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    report = (out / "report.md").read_text(encoding="utf-8")
    for case_id in cases:
        png = matplotlib.image.imread(out / f"{case_id}_lesions.png")
        shown = {r["diameter_slice"] for r in rows if r["case_id"] == case_id and int(r["lesion"]) <= 4}
        height, width = png.shape[:2]
        assert width > height * 2 / len(shown) * 0.8  # two phases across, a row per slice of the 4 largest lesions
        assert f"![{case_id}]({case_id}_lesions.png)" in report
    for row in rows:
        line = f"| {row['case_id']} | {row['lesion']} | {float(row['volume_ml']):.2f} | "
        assert line in report


def test_evaluate_scores_the_label_maps(predicted, tmp_path):
    root, _, out, _ = predicted
    copy = shutil.copytree(out, tmp_path / "predictions")
    predicted_summary = (copy / "summary.json").read_bytes()
    done = run_script("paresseg-evaluate", f"--predictions={copy}", f"--cohort={root / 'cohort'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (copy / "summary.json").read_bytes() == predicted_summary  # paresseg-predict's, not evaluate's to replace
    ours = json.loads((copy / "scores.json").read_text())
    assert ours["info"]["labels"] == {"tumor": 2}  # read from paresseg-predict's summary, and kept
    by_id = {r["case_id"]: r for r in ours["cases"]}
    assert "metrics" not in by_id["case_2"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(copy / "case_0.nii.gz")))
    assert by_id["case_0"]["metrics"]["dice"] == pytest.approx(
        case_metrics(labels == 2, _case("case_0", *CASES["case_0"], 0).tumor)["dice"])
    # paresseg-predict's own summary.json is a run too: tables and a paired t-test over the scored cases.
    done = run_script("paresseg-evaluate", f"--run=ensemble={out}", f"--run=rescored={copy / 'scores.json'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\| ensemble +\| 2 +\|", done.stdout) and "(2 cases): rescored" in done.stdout


def test_cross_validation_workdir_is_an_ensemble_of_its_folds(tmp_path):
    cv = tmp_path / "cv"
    for fold, seed in ((1, 1), (0, 0), (10, 2)):
        save_tiny_model(cv / f"fold_{fold}" / "best_model", seed=seed)
    loaded = ensemble.load_ensemble(cv)
    assert [Path(s).parent.name for s in loaded.sources] == ["fold_0", "fold_1", "fold_10"]
    case = _case("c", (3, 24, 24), True, 0)
    images = {p: preprocess.hu_window(v) for p, v in case.phases.items()}
    members = [predict.predict_volume(m, v, images, batch_size=2) for m, v in loaded.members]
    np.testing.assert_allclose(loaded.probability(images, batch_size=2), np.mean(members, axis=0), atol=1e-6)
    assert not np.allclose(members[0], members[1])  # the folds differ, so the mean is not any one of them
    with pytest.raises(FileNotFoundError, match="no saved model"):
        ensemble.load_ensemble(tmp_path / "empty")


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # every XLA compilation (jax._src.dispatch)
COMPILATIONS = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: COMPILATIONS.append(seconds) if event == BACKEND_COMPILE else None)


def test_ensemble_members_share_one_compilation_per_padded_shape(tmp_path, two_models):
    # Shapes no other test uses (padded 96 x 96 and 128 x 64), so the jit cache starts without them.
    write_cohort(tmp_path / "cohort", {"a": ((3, 66, 70), True), "b": ((4, 100, 40), False), "c": ((4, 70, 66), True)})
    segmenter = study.Segmenter.load(two_models, eval_config={"batch_size": 2, "threshold": 0.5},
                                     preprocess_config={"register": False})
    before = len(COMPILATIONS)
    folder.predict_folder(tmp_path / "cohort", tmp_path / "out", segmenter)
    # Three cases of two padded shapes, two models of one architecture: two compilations, not six.
    assert len(COMPILATIONS) - before == 2


def test_four_phase_model_takes_every_phase_by_name(tmp_path):
    model = save_tiny_model(tmp_path / "model4", phases=("pv", "art", "nc", "dl"))
    case = _case("study", (4, 32, 32), True, 3, phases=("pv", "art", "nc", "dl"))
    write_case(case, tmp_path / "study")
    paths = {p: tmp_path / "study" / f"{p}.nii.gz" for p in case.phases}
    with pytest.raises(PareSegError, match=r"--phase dl=PATH"):
        study.predict_files({p: paths[p] for p in ("pv", "art", "nc")}, model, tmp_path / "m.nii.gz")
    out = tmp_path / "mask.nii.gz"
    done = run_script("paresseg-predict", f"--pv={paths['pv']}", f"--art={paths['art']}", f"--phase=nc={paths['nc']}",
                      f"--phase=DL={paths['dl']}", f"--model={model}", f"--liver={tmp_path / 'study' / 'liver.nii.gz'}",
                      f"--out={out}", "--threshold=0.5", "--noregister")
    assert done.returncode == 0, done.stderr[-3000:]
    prob, labels = _expected(case, [model])
    decided = np.abs(prob - 0.5) > 1e-4
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[decided], (labels == 2)[decided])


def test_segment_api_takes_images_in_hu_and_returns_the_label_map(tmp_path, two_models):
    case = _case("study", (5, 30, 34), True, 0)
    pv = GEOMETRY.apply_to(sitk.GetImageFromArray(case.phases["pv"]))
    art = GEOMETRY.apply_to(sitk.GetImageFromArray(case.phases["art"]))
    liver = GEOMETRY.apply_to(sitk.GetImageFromArray(case.liver))
    labels = study.segment({"pv": pv, "art": art}, two_models, liver=liver, register=False, threshold=0.5,
                           batch_size=2)
    assert labels.GetSize() == pv.GetSize() and labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(labels.GetOrigin(), GEOMETRY.origin, atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), GEOMETRY.direction, atol=1e-6)
    prob, expected = _expected(case, two_models)
    decided = np.abs(prob - 0.5) > 1e-4
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels)[decided], expected[decided])
    # Files work as well as images, and a loaded Segmenter serves many calls.
    write_case(case, tmp_path / "study")
    segmenter = study.Segmenter.load(two_models, eval_config={"threshold": 0.5, "batch_size": 2},
                                     preprocess_config={"register": False})
    again = study.segment({"pv": tmp_path / "study" / "pv.nii.gz", "art": art}, segmenter,
                          liver=tmp_path / "study" / "liver.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(labels))


def test_folder_checks_every_case_for_the_models_phases_before_work(tmp_path, two_models):
    cases = write_cohort(tmp_path / "cohort")
    (tmp_path / "cohort" / "case_1" / "art.nii.gz").unlink()
    with pytest.raises(PareSegError, match=r"case 'case_1' has no image for phase\(s\) \['art'\]"):
        folder.predict_folder(tmp_path / "cohort", tmp_path / "out", two_models)
    assert not (tmp_path / "out").exists() and len(cases) == 3  # nothing written, not even case_0


def test_folder_gives_a_missing_art_as_absent_to_a_model_trained_with_phase_dropout(tmp_path):
    model = save_tiny_model(tmp_path / "pd", seed=2, **{absent_phases.SPEC_KEY: 0.3})
    write_cohort(tmp_path / "cohort")
    (tmp_path / "cohort" / "case_1" / "art.nii.gz").unlink()
    segmenter = study.Segmenter.load(model, eval_config={"threshold": 0.5, "batch_size": 2},
                                     preprocess_config={"register": False})
    summary = folder.predict_folder(tmp_path / "cohort", tmp_path / "out", segmenter)
    absent = {r["case_id"]: r["absent_phases"] for r in summary["cases"]}
    assert absent == {"case_0": [], "case_1": ["art"], "case_2": []}
    assert "without ART" in folder.case_line(next(r for r in summary["cases"] if r["case_id"] == "case_1"))
    # the same label map as one study given without ART (single-study mode: ART as zeros)
    alone = study.segment({"pv": tmp_path / "cohort" / "case_1" / "pv.nii.gz"}, segmenter,
                          liver=tmp_path / "cohort" / "case_1" / "liver.nii.gz")
    in_folder = sitk.ReadImage(str(folder.label_map_path(tmp_path / "out", "case_1", "nifti")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(in_folder), sitk.GetArrayFromImage(alone))


def _seg_frames(seg_path, source_folder):
    """{(segment number, z): frame} of a DICOM-SEG, z from the source instance each frame derives from."""
    seg = pydicom.dcmread(seg_path)
    z_of = {d.SOPInstanceUID: int(d.InstanceNumber) - 1 for d in map(pydicom.dcmread, sorted(source_folder.iterdir()))}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    found = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        found[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber, z_of[uid]] = frame
    return seg, found


def test_dicom_seg_of_a_dicom_study_references_its_pv_series(tmp_path, two_models):
    grid = Grid(shape=(5, 32, 32), spacing=(0.75, 0.8, 3.0))
    rng = np.random.default_rng(7)
    study_ = Study()
    pv_dir = write_ct_series(tmp_path / "dicom", study_, rng.integers(-100, 250, grid.shape).astype(np.int16), grid,
                             number=3, description="PORTAL")
    art_dir = write_ct_series(tmp_path / "dicom", study_, rng.integers(-100, 250, grid.shape).astype(np.int16), grid,
                              number=4, description="ARTERIAL")
    liver = np.zeros(grid.shape, np.uint8)
    liver[1:4, 6:26, 5:27] = 1
    liver_image = sitk.GetImageFromArray(liver)
    liver_image.CopyInformation(read_image(pv_dir))
    sitk.WriteImage(liver_image, str(tmp_path / "liver.nii.gz"))
    out = tmp_path / "out"
    done = run_script("paresseg-predict", f"--pv={pv_dir}", f"--art={art_dir}", f"--model={two_models[0]}",
                      f"--liver={tmp_path / 'liver.nii.gz'}", f"--out={out / 'mask.nii.gz'}",
                      f"--dicom_seg={out / 'seg.dcm'}", "--threshold=0.5", "--noregister")
    assert done.returncode == 0, done.stderr[-3000:]
    seg, frames = _seg_frames(out / "seg.dcm", pv_dir)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study_.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(next(pv_dir.iterdir())).SeriesInstanceUID
    tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))) > 0
    assert tumor.any() and frames  # the random model finds some tumor in the ROI: the frames carry both segments
    for (segment, z), frame in frames.items():
        expected = tumor[z] if segment == 2 else (liver[z] > 0) | tumor[z]  # the SEG's liver includes its tumors
        np.testing.assert_array_equal(frame > 0, expected)
    assert {z for s, z in frames if s == 1} == {z for z in range(grid.shape[0]) if liver[z].any() or tumor[z].any()}

    # Folder mode: the same study as a case folder; a NIfTI-only cohort is refused before any work.
    cohort = tmp_path / "cohort"
    shutil.copytree(pv_dir, cohort / "case_a" / "pv")
    shutil.copytree(art_dir, cohort / "case_a" / "art")
    shutil.copy(tmp_path / "liver.nii.gz", cohort / "case_a" / "liver.nii.gz")
    segmenter = study.Segmenter.load(two_models[0], eval_config={"threshold": 0.5},
                                     preprocess_config={"register": False})
    folder.predict_folder(cohort, tmp_path / "segs", segmenter, output_format="dicom_seg")
    _, again = _seg_frames(tmp_path / "segs" / "case_a.dcm", cohort / "case_a" / "pv")
    assert again.keys() == frames.keys() and all(np.array_equal(again[k], frames[k]) for k in frames)
    write_cohort(tmp_path / "nifti")
    with pytest.raises(PareSegError, match="DICOM series folder"):
        folder.predict_folder(tmp_path / "nifti", tmp_path / "refused", segmenter, output_format="dicom_seg")
    assert not (tmp_path / "refused").exists()


def _organ_map(case):
    """A TotalSegmentator-style multi-label map: liver 5 where the case's liver is, other organs 1-4 beside it."""
    organs = np.where(case.liver > 0, 5, 0).astype(np.uint8)
    organs[:, :4, :] = 1  # spleen
    organs[:, -4:, :3] = 2  # a kidney
    return organs


def test_liver_from_a_multi_label_map(tmp_path, two_models):
    """--liver_label 5 takes the ROI from a multi-label map: the same label maps as the case's 0/1 liver mask."""
    layout = {"case_0": CASES["case_0"]}
    cases = write_cohort(tmp_path / "cohort", layout)
    case = cases["case_0"]
    organs = tmp_path / "cohort" / "case_0" / "liver.nii.gz"  # the case's liver file, now a label map
    write_image(_organ_map(case), case, organs)
    out = tmp_path / "out"
    done = run_script("paresseg-predict", f"--input={tmp_path / 'cohort'}", f"--output={out}",
                      f"--model={two_models[0]}", "--liver_label=5", "--threshold=0.5", "--noregister")
    assert done.returncode == 0, done.stderr[-3000:]
    prob, expected = _expected(case, two_models[:1])
    decided = np.abs(prob - 0.5) > 1e-4
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_0.nii.gz")))
    np.testing.assert_array_equal(labels[decided], expected[decided])
    # One study, and the notebook API: the same; a label the map lacks, or no label for a map, is refused.
    segmenter = study.Segmenter.load(two_models[:1], eval_config={"threshold": 0.5, "batch_size": 2},
                                     preprocess_config={"register": False})
    phases = {p: tmp_path / "cohort" / "case_0" / f"{p}.nii.gz" for p in ("pv", "art")}
    study.predict_files(phases, segmenter, tmp_path / "one.nii.gz", liver=organs, liver_label=5)
    one = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one.nii.gz")))
    np.testing.assert_array_equal(one[decided], (expected == 2)[decided])
    api = sitk.GetArrayFromImage(study.segment(phases, segmenter, liver=organs, liver_label=5))
    np.testing.assert_array_equal(api, labels)
    with pytest.raises(PareSegError, match=r"liver.nii.gz: liver label map has no voxel of label 6 .*\[0, 1, 2, 5\]"):
        study.predict_files(phases, segmenter, tmp_path / "six.nii.gz", liver=organs, liver_label=6)
    with pytest.raises(PareSegError, match=r"liver mask has labels \[0, 1, 2, 5\]; expected 0/1"):
        study.predict_files(phases, segmenter, tmp_path / "none.nii.gz", liver=organs)
    assert not (tmp_path / "six.nii.gz").exists() and not (tmp_path / "none.nii.gz").exists()


def test_folder_prediction_resumes_and_splits_into_parts(tmp_path, two_models, monkeypatch):
    """A run stopped halfway keeps its finished cases; parts share one folder; outputs are checked, not trusted."""
    from paresseg_jax.infer import resume

    write_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    segmenter = study.Segmenter.load(two_models[:1], eval_config={"threshold": 0.5, "batch_size": 2},
                                     preprocess_config={"register": False})

    def run(**options):
        return folder.predict_folder(tmp_path / "cohort", out, options.pop("segmenter", segmenter), **options)

    real = folder._predict_case

    def killed_at_case_2(entry, *args, **kwargs):
        if entry.case_id == "case_2":
            raise KeyboardInterrupt
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(folder, "_predict_case", killed_at_case_2)
    with pytest.raises(PareSegError, match="interrupted after 2 of 3 cases"):
        run()
    monkeypatch.setattr(folder, "_predict_case", real)
    assert [json.loads(line)["record"]["case_id"] for line in (out / "finished.jsonl").read_text().splitlines()] == [
        "case_0", "case_1"]
    assert [c["case_id"] for c in json.loads((out / "summary.json").read_text())["cases"]] == ["case_0", "case_1"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case_*.nii.gz")}
    summary = run()
    assert summary["info"]["predicted_now"] == ["case_2"] and len(summary["cases"]) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case_[01].nii.gz")} == stamps  # not written again
    assert run()["info"]["predicted_now"] == []
    (out / "case_1.nii.gz").write_bytes((out / "case_1.nii.gz").read_bytes()[:-8])  # an output damaged since
    (out / "case_0.nii.gz").unlink()
    assert run()["info"]["predicted_now"] == ["case_0", "case_1"]
    assert run(overwrite=True)["info"]["predicted_now"] == ["case_0", "case_1", "case_2"]
    other = study.Segmenter.load(two_models[:1], eval_config={"threshold": 0.7, "batch_size": 2},
                                 preprocess_config={"register": False})
    assert run(segmenter=other)["info"]["predicted_now"] == ["case_0", "case_1", "case_2"]  # another setting

    single, out = out, tmp_path / "parts"
    first = run(segmenter=other, num_parts=2, part_id=1)
    assert first["info"]["predicted_now"] == ["case_1"] and [r["case_id"] for r in first["cases"]] == ["case_1"]
    second = run(segmenter=other, num_parts=2, part_id=0)
    assert second["info"]["predicted_now"] == ["case_0", "case_2"] and len(second["cases"]) == 3
    assert sorted(p.name for p in out.glob(resume.RECORD_GLOB)) == ["finished.part-0-of-2.jsonl",
                                                                   "finished.part-1-of-2.jsonl"]
    for case_id in CASES:  # the parts' label maps are the single run's with the same settings
        parted, whole = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case_id}.nii.gz"))) for d in (out, single))
        np.testing.assert_array_equal(parted, whole)
    with pytest.raises(PareSegError, match="part 2 of 2 does not exist"):
        run(num_parts=2, part_id=2)


def test_parts_finishing_at_once_both_reach_the_summary(tmp_path, monkeypatch):
    """Part 0 reads the records, then part 1 appends its case and writes its summary, then part 0 writes: without
    the folder's lock the summary would miss part 1's case (the last writer had not seen it). No model needed."""
    import threading

    from paresseg_jax.data.layouts import CaseEntry
    from paresseg_jax.infer import resume

    out = tmp_path / "out"
    out.mkdir()
    entries = [CaseEntry("a", {}), CaseEntry("b", {})]
    keys = {"a": "key of a", "b": "key of b"}
    read_by_0, written_by_1 = threading.Event(), threading.Event()
    real_finished = resume.finished

    def finished(output, keys):
        found = real_finished(output, keys)
        if threading.current_thread().name == "part 0":
            read_by_0.set()
            written_by_1.wait(timeout=2)  # part 1 writes now, unless the lock holds it back until part 0 is done
        return found

    errors = []

    def part(part_id, case_id):
        try:
            write_part(part_id, case_id)
        except BaseException as error:  # shown by the test, not lost in the thread
            errors.append(error)
            read_by_0.set()
            written_by_1.set()

    def write_part(part_id, case_id):
        if part_id == 1:
            assert read_by_0.wait(timeout=10)
        (out / f"{case_id}.nii.gz").write_bytes(case_id.encode())
        record = {"case_id": case_id, "tumor_ml": 0.0, "files": {"labels": str(out / f"{case_id}.nii.gz")},
                  "lesions": {"count": 0, "tumor_burden_pct": 0.0, "lesions": []}}
        resume.append(resume.record_path(out, 2, part_id), keys[case_id], record)
        folder._summarize(out, entries, keys, {}, {"input": "cohort", "part": part_id})
        if part_id == 1:
            written_by_1.set()

    monkeypatch.setattr(resume, "finished", finished)
    threads = [threading.Thread(target=part, args=(k, c), name=f"part {k}") for k, c in ((0, "a"), (1, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    summary = json.loads((out / "summary.json").read_text())
    assert [r["case_id"] for r in summary["cases"]] == ["a", "b"], summary["info"]
    assert summary["info"]["part"] == 1  # the last writer, which had seen both cases
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [resume.LOCK_FILE]  # no temporaries


def test_dicom_round_trip_import_predict_seg(tmp_path, two_models):
    """DICOM study -> paresseg-import-dicom (NIfTI cohort) -> folder prediction -> DICOM-SEG on the original PV
    series: read back with highdicom, every frame derives from the PV instance at its own position."""
    import highdicom as hd
    from dicom_studies import write_seg

    from paresseg_jax.data import dicom_import

    grid = Grid(shape=(6, 32, 32), spacing=(0.75, 0.8, 3.0), origin=(-10.0, 5.0, 60.0))
    rng = np.random.default_rng(3)
    study_ = Study("RT_001")
    pv_dir = write_ct_series(tmp_path / "dicom", study_, rng.integers(-100, 250, grid.shape).astype(np.int16), grid,
                             number=3, description="PORTAL VENOUS", slice_order=[4, 1, 5, 0, 3, 2])
    write_ct_series(tmp_path / "dicom", study_, rng.integers(-100, 250, grid.shape).astype(np.int16), grid,
                    number=4, description="ARTERIAL")
    liver = np.zeros(grid.shape, np.uint8)
    liver[1:5, 6:26, 5:27] = 1
    write_seg(tmp_path / "dicom", study_, pv_dir, {"Liver": liver})
    report = dicom_import.import_dicom(tmp_path / "dicom", tmp_path / "cohort", progress=False)
    assert report["imported"] == 1, report
    segmenter = study.Segmenter.load(two_models[0], eval_config={"threshold": 0.5},
                                     preprocess_config={"register": False})
    folder.predict_folder(tmp_path / "cohort", tmp_path / "segs", segmenter, output_format="dicom_seg")
    folder.predict_folder(tmp_path / "cohort", tmp_path / "maps", segmenter)
    (case_id,) = [p.stem for p in (tmp_path / "segs").glob("*.dcm")]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "maps" / f"{case_id}.nii.gz")))
    assert (labels == 2).any() and (labels == 1).any()

    seg = hd.seg.segread(tmp_path / "segs" / f"{case_id}.dcm")
    sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p) for p in pv_dir.iterdir())}
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    assert seg.StudyInstanceUID == study_.study_uid
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = sources[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = group.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in source.ImagePositionPatient])
        z = int(source.InstanceNumber) - 1  # the writer made slice z instance z + 1, whatever the file order
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(frame > 0, labels[z] >= 1 if segment == 1 else labels[z] == 2)
        seen.add((segment, z))
    assert {z for s, z in seen if s == 1} == set(np.flatnonzero((labels >= 1).any(axis=(1, 2))))
    assert {z for s, z in seen if s == 2} == set(np.flatnonzero((labels == 2).any(axis=(1, 2))))


def test_cases_a_model_trained_on_are_not_scored_unless_asked_for(tmp_path):
    from paresseg_jax.evaluate import predictions

    write_cohort(tmp_path / "cohort")
    run = tmp_path / "run"
    model = save_tiny_model(run / "last_model")
    (run / "split.json").write_text(json.dumps({"train": ["case_1"], "validation": [], "test": ["case_0", "case_2"]}))
    with pytest.raises(PareSegError, match=r"cases \['case_1'\] trained or validated the model"):
        folder.predict_folder(tmp_path / "cohort", tmp_path / "out", model, eval_config={"batch_size": 2})
    assert not (tmp_path / "out").exists()  # refused before any work
    folder.predict_folder(tmp_path / "cohort", tmp_path / "out", model, eval_config={"batch_size": 2},
                          preprocess_config={"register": False}, allow_training_cases=True)
    with pytest.raises(PareSegError, match="--allow_training_cases"):
        predictions.evaluate_folder(tmp_path / "out", tmp_path / "cohort", out=tmp_path / "scored")
    scored = predictions.evaluate_folder(tmp_path / "out", tmp_path / "cohort", out=tmp_path / "scored",
                                         allow_training_cases=True)
    assert {r["case_id"] for r in scored["cases"] if "metrics" in r} == {"case_0", "case_1"}
