"""Bad inputs through the launchers, as a user runs them: each one a short error, not a result and not a traceback.

Every case is a real launcher process given one damaged or mismatched input
(everything else right). Each must end with status 2, no traceback, an
error line naming the offending file and saying what is wrong, and nothing
left in its output folder. Inputs that can be judged from paths and headers fail before jax is
imported, so most cases take about a second.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paresseg_jax.data.images import Geometry, write_image

pytestmark = pytest.mark.xdist_group("bad_inputs")  # the module's fixture files are built once

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 32, 32)
GEOMETRY = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SHIFTED = Geometry((1.0, 1.0, 2.0), (30.4, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # covers 5% of PV in x
OFFSET = Geometry((1.0, 1.0, 2.0), (1.5, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _save_model(folder: Path, spec: dict) -> Path:
    """A saved model with zero weights: these cases must fail before any weight is used."""
    import jax

    from paresseg_jax import model_io, models

    module = models.create(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), models.variable_shapes(module))
    return model_io.save_model(folder, spec, zeros)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One good study, cohort, predictions and models, plus one damaged variant of each."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    pv = rng.uniform(-100, 200, SHAPE).astype(np.float32)
    tumor = np.zeros(SHAPE, np.uint8)
    tumor[3:5, 10:20, 10:20] = 1
    liver = np.zeros(SHAPE, np.uint8)
    liver[1:7, 4:28, 4:28] = 1
    good = {name: write_image(array, GEOMETRY, root / f"{name}.nii.gz")
            for name, array in (("pv", pv), ("art", pv), ("liver", liver), ("tumor", tumor))}
    files = dict(good)
    data = (root / "pv.nii.gz").read_bytes()
    (root / "cut").mkdir()
    (root / "cut" / "pv.nii.gz").write_bytes(data[: len(data) // 2])
    files["cut_pv"] = root / "cut" / "pv.nii.gz"
    with_nan = pv.copy()
    with_nan[4, 5, 6] = np.nan
    files["nan_pv"] = write_image(with_nan, GEOMETRY, root / "nan" / "pv.nii.gz")
    files["text_pv"] = root / "text" / "pv.nii.gz"
    files["text_pv"].parent.mkdir()
    files["text_pv"].write_text("not an image")
    files["flat_pv"] = root / "flat" / "pv.nii.gz"
    files["flat_pv"].parent.mkdir()
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.float32)), str(files["flat_pv"]))
    files["empty_dir"] = root / "empty_dicom"
    files["empty_dir"].mkdir()
    files["partial_art"] = write_image(pv, SHIFTED, root / "partial" / "art.nii.gz")
    files["zero_art"] = write_image(np.zeros(SHAPE, np.float32), GEOMETRY, root / "zero" / "art.nii.gz")
    files["offset_tumor"] = write_image(tumor, OFFSET, root / "offset" / "tumor.nii.gz")
    files["a_file"] = root / "a_file"
    files["a_file"].write_text("x")

    paresseg = {"name": "paresseg", "width": 4}
    files["model"] = _save_model(root / "model", paresseg)
    files["liver_model"] = _save_model(root / "liver_model", {"name": "resseg", "width": 4})
    for name, spec_text in (("model_wide", json.dumps({**paresseg, "width": 8})),
                            ("model_other_arch", json.dumps({"name": "mc_fcn", "width": 4})),
                            ("model_bad_json", "{not json")):
        shutil.copytree(files["model"], root / name)
        (root / name / "model.json").write_text(spec_text)
    shutil.copytree(files["model"], root / "model_no_variables")
    shutil.rmtree(root / "model_no_variables" / "variables")
    shutil.copytree(files["model"], root / "model_damaged")
    for f in (root / "model_damaged" / "variables").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0" * 7)
    (root / "no_model").mkdir()
    files.update({name: root / name for name in ("model_wide", "model_other_arch", "model_bad_json",
                                                 "model_no_variables", "model_damaged", "no_model")})

    cohort = root / "cohort"
    write_image(pv, GEOMETRY, cohort / "c0" / "pv.nii.gz")
    write_image(tumor, GEOMETRY, cohort / "c0" / "tumor.nii.gz")
    files["cohort"] = cohort
    for name, content in (("null_cases", json.dumps({"cases": None})), ("bad_json", "{"),
                          ("missing_file", json.dumps({"cases": [{"case_id": "c0", "phases": {"pv": "nope.nii.gz"}}]}))):
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(content)
        files[f"manifest_{name}"] = root / name / "manifest.json"
    preds = root / "preds"
    preds.mkdir()
    write_image(tumor, GEOMETRY, preds / "c0.nii.gz")
    files["preds"] = preds
    blob = (preds / "c0.nii.gz").read_bytes()
    (root / "preds_cut").mkdir()
    (root / "preds_cut" / "c0.nii.gz").write_bytes(blob[: len(blob) * 3 // 4])
    files["preds_cut"] = root / "preds_cut"
    write_image(tumor, OFFSET, root / "preds_offset" / "c0.nii.gz")
    files["preds_offset"] = root / "preds_offset"
    (root / "preds_none").mkdir()
    files["preds_none"] = root / "preds_none"
    (root / "summary_bad").mkdir()
    (root / "summary_bad" / "summary.json").write_text('{"cases": ')
    files["summary_bad"] = root / "summary_bad" / "summary.json"
    files["not_pth"] = root / "notes.pth"
    files["not_pth"].write_text("not a checkpoint")
    files["config"] = "smoke"
    return files


def _predict(f, folder, **changes):
    args = {"pv": f["pv"], "art": f["art"], "model": f["model"], "out": folder / "mask.nii.gz",
            "prob": folder / "prob.nii.gz", "overlay": folder / "overlay.png", **changes}
    return ["predict"] + [f"--{k}={v}" for k, v in args.items() if v is not None]


def _evaluate(f, folder, **changes):
    args = {"predictions": f["preds"], "cohort": f["cohort"], "figures": folder / "figures", **changes}
    return ["evaluate"] + [f"--{k}={v}" for k, v in args.items() if v is not None]


def _train(f, folder, workdir=None, **config):
    return (["train", f"--config={f['config']}", f"--workdir={workdir or folder / 'work'}"]
            + [f"--config.{k}={v}" for k, v in config.items()])


# id -> (command line from (files, output folder), what the error must name)
CASES = {
    "pv_missing": (lambda f, o: _predict(f, o, pv=o.parent / "absent" / "pv.nii.gz"), "absent/pv.nii.gz"),
    "pv_truncated_gzip": (lambda f, o: _predict(f, o, pv=f["cut_pv"]), "cut/pv.nii.gz"),
    "pv_nan_voxel_nifti": (lambda f, o: _predict(f, o, pv=f["nan_pv"]), "nan/pv.nii.gz"),
    "pv_not_an_image": (lambda f, o: _predict(f, o, pv=f["text_pv"]), "text/pv.nii.gz"),
    "pv_2d": (lambda f, o: _predict(f, o, pv=f["flat_pv"]), "flat/pv.nii.gz"),
    "pv_empty_dicom_folder": (lambda f, o: _predict(f, o, pv=f["empty_dir"]), "empty_dicom"),
    "art_missing_for_two_phase_model": (lambda f, o: _predict(f, o, art=None), "--art"),
    "art_covers_5_percent": (lambda f, o: _predict(f, o, art=f["partial_art"]), "partial/art.nii.gz"),
    "art_all_zero_fails_registration": (lambda f, o: _predict(f, o, art=f["zero_art"]), "zero/art.nii.gz"),
    "art_for_single_phase_model": (lambda f, o: _predict(f, o, model=f["liver_model"]), "liver_model"),
    "model_missing": (lambda f, o: _predict(f, o, model=o.parent / "absent_model"), "absent_model"),
    "model_folder_without_model": (lambda f, o: _predict(f, o, model=f["no_model"]), "no_model"),
    "model_spec_other_width": (lambda f, o: _predict(f, o, model=f["model_wide"]), "model_wide"),
    "model_spec_other_architecture": (lambda f, o: _predict(f, o, model=f["model_other_arch"]), "model_other_arch"),
    "model_spec_bad_json": (lambda f, o: _predict(f, o, model=f["model_bad_json"]), "model_bad_json/model.json"),
    "model_without_variables": (lambda f, o: _predict(f, o, model=f["model_no_variables"]), "model_no_variables"),
    "model_damaged_variables": (lambda f, o: _predict(f, o, model=f["model_damaged"]), "model_damaged"),
    "liver_model_missing": (lambda f, o: _predict(f, o, liver_model=f["no_model"]), "no_model"),
    "liver_mask_missing": (lambda f, o: _predict(f, o, liver=o.parent / "absent_liver.nii.gz"), "absent_liver.nii.gz"),
    "gt_on_another_grid": (lambda f, o: _predict(f, o, gt=f["offset_tumor"]), "offset/tumor.nii.gz"),
    "out_unsupported_type": (lambda f, o: _predict(f, o, out=o / "mask.txt"), "mask.txt"),
    "out_is_a_folder": (lambda f, o: _predict(f, o, out=f["empty_dir"]), "empty_dicom"),
    "out_under_a_file": (lambda f, o: _predict(f, o, out=f["a_file"] / "mask.nii.gz"), "a_file"),
    "out_overwrites_pv": (lambda f, o: _predict(f, o, out=f["pv"]), "pv.nii.gz"),
    "prob_same_as_out": (lambda f, o: _predict(f, o, prob=o / "mask.nii.gz"), "mask.nii.gz"),
    "prob_under_a_file": (lambda f, o: _predict(f, o, prob=f["a_file"] / "prob.nii.gz"), "a_file"),
    "overlay_not_a_figure_type": (lambda f, o: _predict(f, o, overlay=o / "overlay.nii.gz"), "overlay.nii.gz"),
    "evaluate_predictions_missing": (lambda f, o: _evaluate(f, o, predictions=o.parent / "absent_preds"),
                                     "absent_preds"),
    "evaluate_prediction_of_a_case_missing": (lambda f, o: _evaluate(f, o, predictions=f["preds_none"]), "preds_none"),
    "evaluate_truncated_prediction": (lambda f, o: _evaluate(f, o, predictions=f["preds_cut"]), "preds_cut/c0.nii.gz"),
    "evaluate_prediction_on_another_grid": (lambda f, o: _evaluate(f, o, predictions=f["preds_offset"]),
                                            "preds_offset/c0.nii.gz"),
    "evaluate_manifest_cases_null": (lambda f, o: _evaluate(f, o, cohort=f["manifest_null_cases"]),
                                     "null_cases/manifest.json"),
    "evaluate_manifest_bad_json": (lambda f, o: _evaluate(f, o, cohort=f["manifest_bad_json"]),
                                   "bad_json/manifest.json"),
    "evaluate_manifest_names_missing_file": (lambda f, o: _evaluate(f, o, cohort=f["manifest_missing_file"]),
                                             "nope.nii.gz"),
    "evaluate_run_missing": (lambda f, o: ["evaluate", f"--run=a={o.parent / 'absent_run'}"], "absent_run"),
    "evaluate_run_summary_bad_json": (lambda f, o: ["evaluate", f"--run=a={f['summary_bad']}"],
                                      "summary_bad/summary.json"),
    "evaluate_figures_is_a_file": (lambda f, o: _evaluate(f, o, figures=f["a_file"]), "a_file"),
    "convert_input_missing": (lambda f, o: ["convert", f"--input={o.parent / 'absent.pth'}", f"--output={o / 'm'}"],
                              "absent.pth"),
    "convert_input_not_a_checkpoint": (lambda f, o: ["convert", f"--input={f['not_pth']}", f"--output={o / 'm'}"],
                                       "notes.pth"),
    "convert_output_folder_not_empty": (lambda f, o: ["convert", f"--input={f['not_pth']}",
                                                      f"--output={f['model']}"], "model"),
    "convert_output_pth_exists": (lambda f, o: ["convert", f"--input={f['model']}", f"--output={f['not_pth']}"],
                                  "notes.pth"),
    "convert_output_not_pth": (lambda f, o: ["convert", f"--input={f['model']}", f"--output={o / 'model.txt'}"],
                               "model.txt"),
    "train_workdir_is_a_file": (lambda f, o: _train(f, o, workdir=f["a_file"]), "a_file"),
    "train_cohort_missing": (lambda f, o: _train(f, o, **{"data.cohort_dir": o.parent / "absent_cohort"}),
                             "absent_cohort"),
    "train_cohort_manifest_names_missing_file": (
        lambda f, o: _train(f, o, **{"data.cohort_dir": f["manifest_missing_file"].parent}), "nope.nii.gz"),
    "train_init_from_missing": (lambda f, o: _train(f, o, **{"data.cohort_dir": f["cohort"],
                                                             "train.init_from": o.parent / "absent_init"}),
                                "absent_init"),
}


# id -> what the error must say (the right error, not just any error naming the file)
SAYS = {
    'art_all_zero_fails_registration': 'registration to PV failed',
    'art_covers_5_percent': 'covers only 5% of the PV image',
    'art_for_single_phase_model': 'leave out --art',
    'art_missing_for_two_phase_model': 'give the missing image(s) with --art',
    'convert_input_missing': 'does not exist',
    'convert_input_not_a_checkpoint': 'not a readable PyTorch checkpoint',
    'convert_output_folder_not_empty': 'pass --overwrite',
    'convert_output_not_pth': 'unsupported file type',
    'convert_output_pth_exists': 'pass --overwrite',
    'evaluate_figures_is_a_file': 'is an existing file',
    'evaluate_manifest_bad_json': 'not valid JSON',
    'evaluate_manifest_cases_null': 'no list of case records under "cases"',
    'evaluate_manifest_names_missing_file': 'which does not exist',
    'evaluate_prediction_of_a_case_missing': "no prediction for case 'c0'",
    'evaluate_prediction_on_another_grid': '--resample_masks',
    'evaluate_predictions_missing': 'does not exist',
    'evaluate_run_missing': 'does not exist',
    'evaluate_run_summary_bad_json': 'not valid JSON',
    'evaluate_truncated_prediction': 'cannot read image',
    'gt_on_another_grid': '--resample_masks',
    'liver_mask_missing': 'does not exist',
    'liver_model_missing': 'holds no saved model',
    'model_damaged_variables': 'saved weights',
    'model_folder_without_model': 'holds no saved model',
    'model_missing': 'does not exist',
    'model_spec_bad_json': 'not valid JSON',
    'model_spec_other_architecture': 'are not those of the model',
    'model_spec_other_width': '(32,) stored, (64,) in the spec',
    'model_without_variables': 'has no variables/ folder',
    'out_is_a_folder': 'is an existing folder',
    'out_overwrites_pv': 'would overwrite an input',
    'out_under_a_file': 'is a file, not a folder',
    'out_unsupported_type': 'unsupported file type',
    'overlay_not_a_figure_type': 'unsupported file type',
    'prob_same_as_out': 'given for two outputs',
    'prob_under_a_file': 'is a file, not a folder',
    'pv_2d': '2D',
    'pv_empty_dicom_folder': 'holds no DICOM series',
    'pv_missing': 'does not exist',
    'pv_nan_voxel_nifti': '1 NaN or infinite voxels',
    'pv_not_an_image': 'cannot read image header',
    'pv_truncated_gzip': 'damaged or truncated',
    'train_cohort_manifest_names_missing_file': 'which does not exist',
    'train_cohort_missing': 'does not exist',
    'train_init_from_missing': 'does not exist',
    'train_workdir_is_a_file': 'is an existing file',
}


def _file_hashes(root: Path) -> dict:
    """Every file under the shared fixture folder, by content: a case that wrote into an input shows here."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_error_and_leaves_no_output(data, tmp_path, case):
    command, named = CASES[case]
    expected = SAYS[case]
    out = tmp_path / "out"
    out.mkdir()
    launcher, *args = command(data, out)
    inputs_before = _file_hashes(data["a_file"].parent)
    env = {**os.environ, "PARESSEG_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", f"paresseg_jax_launch.{launcher}", *args], cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    print(f"{case}: {error}")  # the table of inputs and answers, shown by pytest -rP
    assert error.startswith(f"{launcher}.py: error: ") and named in error, error
    assert expected in error, error
    assert not list(out.iterdir()), sorted(p.name for p in out.iterdir())  # nothing written, nothing half-written
    assert _file_hashes(data["a_file"].parent) == inputs_before  # no input touched, whatever xdist's order
