"""Data safety through the console scripts: no command modifies an input, writes outside its output folder,
or goes on past a broken input.

Each case is one ordinary mistake or accident (an output named over an
input through ``..``, a symlink or a hard link; a case id that is a path; a
manifest value of the wrong type; a flag out of range; a DICOM series with a
missing slice; ...). Each must end with status 2 and one error line that
names the file or flag and says what is wrong, before any model runs; every
file the test made is unchanged (by hash) and nothing appears outside the
output folder, which stays empty.
"""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from dicom_studies import Grid, Study, write_ct_series
from test_bad_inputs import _save_model
from test_infer_study import save_tiny_model

from paresseg_jax.data.images import Geometry, write_image

pytestmark = pytest.mark.xdist_group("data_safety")  # the module's fixture files are built once

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHAPE = (8, 32, 32)
GEOMETRY = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
GRID = Grid(shape=(6, 32, 32))


def run_script(name, *args, env=None):
    env = {**os.environ, "PARESSEG_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([str(BIN / f"paresseg-{name}"), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)


def _dicom_series(root: Path, name: str, patient: str = "P1", **changes) -> Path:
    """A 6-slice CT series folder (``description`` says PV), with ``changes`` applied to its files' headers:
    ``drop``: a slice index to delete; ``duplicate``: a slice to copy under a new instance; ``tilt``: a slice
    whose orientation is rotated; ``smaller``: two 16 x 16 slices joining the series beyond its end."""
    hu, study = np.random.default_rng(1).integers(-100, 200, GRID.shape).astype(np.int16), Study(patient_id=patient)
    folder = write_ct_series(root / name, study, hu, GRID, number=2, description="PV portal venous")
    files = sorted(folder.glob("*.dcm"))
    if "smaller" in changes:
        small = Grid(shape=(2, 16, 16), origin=GRID.position(GRID.shape[0]).tolist())
        write_ct_series(root / name, study, hu[:2, :16, :16], small, number=2, description="PV portal venous",
                        series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID, first_instance=50)
    if "drop" in changes:
        files[changes["drop"]].unlink()
    if "duplicate" in changes:
        copy = pydicom.dcmread(files[changes["duplicate"]])
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copy.InstanceNumber = 99
        copy.save_as(folder / "1-99.dcm")
    if "tilt" in changes:
        tilted = pydicom.dcmread(files[changes["tilt"]])
        tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
        tilted.save_as(files[changes["tilt"]])
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A good two-phase study, a tiny two-phase model, a cohort and DICOM series (good and broken)."""
    root = tmp_path_factory.mktemp("safety")
    rng = np.random.default_rng(0)
    pv = rng.uniform(-100, 200, SHAPE).astype(np.float32)
    files = {name: write_image(pv, GEOMETRY, root / f"{name}.nii.gz") for name in ("pv", "art")}
    files["model"] = save_tiny_model(root / "model")
    files["model_pv"] = save_tiny_model(root / "model_pv", phases=("pv",))  # for DICOM PVs, which ART would not fit
    files["model_resseg"] = _save_model(root / "model_resseg", {"name": "resseg", "width": 4})  # one convert takes
    files["root"] = root
    for name, changes in (("dicom_good", {}), ("dicom_gap", {"drop": 3}), ("dicom_duplicate", {"duplicate": 2}),
                          ("dicom_tilt", {"tilt": 4}), ("dicom_sizes", {"smaller": True})):
        files[name] = _dicom_series(root, name, **changes)
    files["dicom_gap_study"] = root / "dicom_gap"
    return files


def _predict(f, folder, **changes):
    args = {"pv": f["pv"], "art": f["art"], "model": f["model"], "out": folder / "mask.nii.gz", **changes}
    return ["predict"] + [f"--{k}={v}" for k, v in args.items() if v is not None]


def _volume(path: Path) -> Path:
    """A CT-like volume (noise in soft-tissue HU; every file the same, so registration finds identity)."""
    return write_image(np.random.default_rng(0).uniform(-100, 200, SHAPE).astype(np.float32), GEOMETRY, path)


def _dicom_predict(f, folder, series, **changes):
    return _predict(f, folder, pv=f[series], art=None, model=f["model_pv"], **changes)


def _tumor(path: Path) -> Path:
    """``path/c0.nii.gz``: a 0/1 tumor mask (a prediction, or a case's ground truth)."""
    tumor = np.zeros(SHAPE, np.uint8)
    tumor[3:5, 10:20, 10:20] = 1
    write_image(tumor, GEOMETRY, path / "c0.nii.gz")
    return path


def _cohort(folder: Path, cases, top=None, pv="pv.nii.gz", tumor=False) -> Path:
    """A manifest cohort in ``folder`` whose cases share one PV and one ART file (``cases``: records without
    phases; ``tumor``: also a tumor mask c0.nii.gz), right for the model but for the one mistake of each case."""
    for name in (pv, "art.nii.gz"):
        _volume(folder / name)
    if tumor:
        _tumor(folder)
    records = [{"phases": {"pv": pv, "art": "art.nii.gz"}, **case} for case in cases]
    (folder / "manifest.json").write_text(json.dumps({"cases": records, **(top or {})}))
    return folder


def _predict_folder(f, out, cohort, *extra, model="model"):
    return ["predict", f"--input={cohort}", f"--output={out}", f"--model={f[model]}", *extra]


def _linked_out(f, out, scratch, kind):
    """--out named as a link to the PV image (a symlink, or a hard link: another name of the same file)."""
    (os.symlink if kind == "symlink" else os.link)(f["pv"], scratch / "mask.nii.gz")
    return _predict(f, out, out=scratch / "mask.nii.gz")


def _long_header(folder: Path) -> Path:
    header = nibabel.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    folder.mkdir()
    (folder / "pv.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 64))
    return folder / "pv.nii.gz"


def _no_torch(folder: Path) -> dict:
    """An environment in which ``import torch`` fails, as where the torch extra is not installed."""
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    return {"PYTHONPATH": str(folder)}


# id -> (command from (files, output folder, scratch folder for inputs), what the error names, what it says);
# a command may be (argv, extra environment).
CASES = {
    # outputs never alias inputs, however the path is spelled
    "out_is_pv_through_dotdot": (lambda f, o, s: _predict(f, o, out=f["root"] / "model" / ".." / "pv.nii.gz"),
                                 "pv.nii.gz", "would overwrite an input"),
    "out_is_a_symlink_to_pv": (lambda f, o, s: _linked_out(f, o, s, "symlink"), "mask.nii.gz",
                               "would overwrite an input"),
    "out_is_a_hard_link_to_pv": (lambda f, o, s: _linked_out(f, o, s, "hard link"), "mask.nii.gz",
                                 "would overwrite an input"),
    "prob_is_art_through_dotdot": (lambda f, o, s: _predict(f, o, prob=f["root"] / "model" / ".." / "art.nii.gz"),
                                   "art.nii.gz", "would overwrite an input"),
    "out_inside_the_dicom_pv_folder": (lambda f, o, s: _dicom_predict(f, o, "dicom_good",
                                                                      out=f["dicom_good"] / "mask.nii.gz"),
                                       "mask.nii.gz", "would write into the input folder"),
    "folder_output_is_the_input_where_names_meet": (
        lambda f, o, s: _predict_folder(f, s, _cohort(s, [{"case_id": "c0"}], pv="c0.nii.gz")),
        "c0.nii.gz", "would overwrite an input"),
    "out_name_too_long_for_its_temporary": (lambda f, o, s: _predict(f, o, out=o / ("m" * 240 + ".nii.gz")),
                                            "out", "name too long to write"),
    "convert_output_inside_its_input_model": (lambda f, o, s: ["convert", f"--input={f['model_resseg']}",
                                                               f"--output={f['model_resseg'] / 'weights.pth'}"],
                                              "weights.pth", "would write into the input folder"),
    "train_workdir_is_the_cohort": (lambda f, o, s: ["train", "--config=smoke", f"--workdir={_cohort(s, [{'case_id': 'c0'}])}",
                                                     f"--config.data.cohort_dir={s}"], "--workdir",
                                    "would overwrite an input"),
    "convert_output_folder_holds_its_input": (lambda f, o, s: ["convert", f"--input={_pth(s / 'models')}",
                                                               f"--output={s / 'models'}", "--overwrite"],
                                              "models", "would be replaced whole, with the input"),
    "import_dicom_case_folder_holds_its_input": (lambda f, o, s: ["import-dicom",
                                                                  f"--input={_dicom_study(s)}",
                                                                  f"--output={s}", "--overwrite"],
                                                 "P1", "would be replaced whole, with the input"),
    # names from data
    "case_id_climbs_out": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "../../x"}])),
                           "manifest.json", "holds the character '/'"),
    "case_id_absolute": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "/tmp/x"}])),
                         "manifest.json", "it is an absolute path"),
    "case_id_empty": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": ""}])), "manifest.json",
                      "it is empty"),
    "case_id_dot": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "."}])), "manifest.json",
                    "names a folder"),
    "case_id_control_character": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "a\nb"}])),
                                  "manifest.json", "holds the character '\\n'"),
    "case_id_too_long_for_the_temporary": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "c" * 220}])),
                                           "manifest.json", "it is too long (220 bytes"),
    "case_outputs_meet": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "a"}, {"case_id": "a_tumor_prob"}]),
                                                          "--save_probabilities"),
                          "a_tumor_prob.nii.gz", "is given for two outputs"),
    "nnunet_case_name_too_long": (lambda f, o, s: _predict_folder(f, o, _dataset(s, NNUNET_SPEC, "c" * 230)),
                                  "imagesTr", "it is too long (230 bytes"),
    "lits_volume_without_number": (lambda f, o, s: _predict_folder(f, o, _lits(s)), "volume-a.nii.gz",
                                   "not named volume-<number>"),
    # manifests and dataset.json, whole
    "manifest_bool_as_string": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "c0",
                                                                                     "resample_masks": "false"}])),
                                "manifest.json", "resample_masks is 'false' (str), not true or false"),
    "manifest_labels_not_a_list": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "c0",
                                                                                        "liver_labels": 1}])),
                                   "manifest.json", "liver_labels is 1 (int), not a list"),
    "manifest_phase_path_a_number": (lambda f, o, s: _predict_folder(f, o, _manifest(s, {"pv": 5})), "manifest.json",
                                     "phases.pv is 5 (int), not a string"),
    "manifest_phase_path_null": (lambda f, o, s: _predict_folder(f, o, _manifest(s, {"pv": None})), "manifest.json",
                                 "phases.pv is None (NoneType), not a string"),
    "manifest_unknown_top_level_key": (lambda f, o, s: _predict_folder(f, o, _cohort(s, [{"case_id": "c0"}],
                                                                                     top={"resample_mask": True})),
                                       "manifest.json", "unknown top-level key 'resample_mask'"),
    "dataset_json_a_list": (lambda f, o, s: _predict_folder(f, o, _dataset(s, [])), "dataset.json",
                            "expected a JSON object"),
    # flags, before anything is loaded
    "threshold_zero": (lambda f, o, s: _predict(f, o, threshold=0), "--threshold=0.0", "in (0.0, 1.0]"),
    "threshold_above_one": (lambda f, o, s: _predict(f, o, threshold=1.5), "--threshold=1.5", "in (0.0, 1.0]"),
    "stride_zero": (lambda f, o, s: _predict(f, o, mode="tile", stride=0), "--stride=0", "at least 1"),
    "stride_beyond_tile": (lambda f, o, s: _predict(f, o, mode="tile", tile=32, stride=40), "--stride=40", "in [1, 32]"),
    "tile_too_small": (lambda f, o, s: _predict(f, o, mode="tile", tile=8), "--tile=8", "at least 16"),
    "batch_size_zero": (lambda f, o, s: _predict(f, o, batch_size=0), "--batch_size=0", "at least 1"),
    "batch_pixels_negative": (lambda f, o, s: _predict(f, o, batch_pixels=-1), "--batch_pixels=-1", "at least 0"),
    "roi_margin_negative": (lambda f, o, s: _predict(f, o, roi_margin=-4), "--roi_margin=-4", "at least 0"),
    "train_config_threshold_zero": (lambda f, o, s: ["train", "--config=smoke", f"--workdir={o}",
                                                     "--config.eval.threshold=0"], "config.eval.threshold=0.0",
                                    "in (0.0, 1.0]"),
    "evaluate_tumor_label_zero": (lambda f, o, s: ["evaluate", f"--predictions={_tumor(s / 'preds')}",
                                                   f"--cohort={_cohort(s, [{'case_id': 'c0', 'tumor': 'c0.nii.gz'}], tumor=True)}",
                                                   "--tumor_label=0"], "--tumor_label=0", "0 is background"),
    "ablation_too_few_cases": (lambda f, o, s: ["ablation", f"--workdir={o}", "--num_cases=2"], "--num_cases=2",
                               "at least 5 (a test case in each of the folds)"),
    "ablation_seed_not_a_number": (lambda f, o, s: ["ablation", f"--workdir={o}", "--seeds=0,one"], "--seeds=0,one",
                                   "not a list of whole numbers"),
    "ablation_fold_out_of_range": (lambda f, o, s: ["ablation", f"--workdir={o}", "--folds=5"], "--folds=5",
                                   "in [0, 4]"),
    "bench_no_repeats": (lambda f, o, s: ["bench", "--repeats=0", f"--json={o}/b.json"], "--repeats=0", "at least 1"),
    "robustness_negative_shift": (lambda f, o, s: ["robustness", f"--workdir={o}", "--magnitudes=0,-2"],
                                  "--magnitudes=-2.0", "at least 0.0"),
    "evaluate_figures_into_the_predictions": (lambda f, o, s: ["evaluate", f"--predictions={_tumor(s / 'preds')}",
                                                               f"--cohort={_cohort(s, [{'case_id': 'c0', 'tumor': 'c0.nii.gz'}], tumor=True)}",
                                                               f"--figures={s / 'preds' / 'figs'}"],
                                              "--figures", "would write into the input folder"),
    "make_phantom_no_cases": (lambda f, o, s: ["make-phantom", f"--out={o}", "--num_cases=0"], "--num_cases=0",
                              "at least 1"),
    "make_phantom_too_small": (lambda f, o, s: ["make-phantom", f"--out={o}", "--size=8"], "--size=8", "at least 16"),
    "make_phantom_without_pv": (lambda f, o, s: ["make-phantom", f"--out={o}", "--phases=art"], "--phases=art",
                                "PV is missing"),
    # files the command did not make
    "make_phantom_over_a_cohort": (lambda f, o, s: ["make-phantom", f"--out={_cohort(s, [{'case_id': 'c0'}])}",
                                                    "--num_cases=2", "--size=16", "--slices=4"],
                                   "--out", "pass --overwrite"),
    "import_dicom_over_a_cohort": (lambda f, o, s: ["import-dicom", f"--input={f['dicom_good']}",
                                                    f"--output={_cohort(s, [{'case_id': 'c0'}])}"],
                                   "--output", "pass --overwrite"),
    "import_dicom_output_inside_input": (lambda f, o, s: ["import-dicom", f"--input={f['dicom_good']}",
                                                          f"--output={f['dicom_good'] / 'cohort'}"],
                                         "cohort", "would write into the input folder"),
    # declared sizes
    "nifti_header_promises_2000_cubed": (lambda f, o, s: _predict(f, o, pv=_long_header(s / "huge")), "huge/pv.nii.gz",
                                         "more than the"),
    # DICOM series integrity
    "dicom_pv_missing_slice": (lambda f, o, s: _dicom_predict(f, o, "dicom_gap"), "dicom_gap",
                               "a slice is missing"),
    "dicom_pv_duplicate_position": (lambda f, o, s: _dicom_predict(f, o, "dicom_duplicate"),
                                    "dicom_duplicate", "two slices at the same position"),
    "dicom_pv_mixed_orientation": (lambda f, o, s: _dicom_predict(f, o, "dicom_tilt"), "dicom_tilt",
                                   "mixed orientation"),
    "dicom_pv_mixed_sizes": (lambda f, o, s: _dicom_predict(f, o, "dicom_sizes"), "dicom_sizes",
                             "slices of different sizes [(16, 16), (32, 32)]"),
    "folder_case_with_missing_slice": (lambda f, o, s: _predict_folder(f, o, _dicom_cohort(s, f), model="model_pv"),
                                       "c1/pv",
                                       "a slice is missing"),
    "import_dicom_missing_slice": (lambda f, o, s: ["import-dicom", f"--input={f['dicom_gap_study']}",
                                                    f"--output={o}"], "dicom_gap", "1 of 1 studies failed"),
    # missing extras
    "convert_without_torch": (lambda f, o, s: (["convert", f"--input={f['model']}", f"--output={o / 'm.pth'}"],
                                               _no_torch(s / "site")), "paresseg-convert",
                              "pip install 'paresseg_jax[torch]'"),
}
# Cases whose command writes part of its output before it fails (the error comes at the end, after the good studies).
WRITES_REPORT = {"import_dicom_missing_slice"}


def _pth(folder: Path) -> Path:
    """A file named like a PyTorch checkpoint (never read: the output is refused first)."""
    folder.mkdir()
    (folder / "weights.pth").write_bytes(b"not read")
    return folder / "weights.pth"


def _dicom_study(folder: Path) -> Path:
    """The folder of a study of patient P1 (a PV series) in ``folder/P1``, the case folder its import writes."""
    study = Study(patient_id="P1")
    write_ct_series(folder, study, np.zeros(GRID.shape, np.int16), GRID, number=2, description="PV portal venous")
    return study.folder(folder)


def _lits(folder: Path) -> Path:
    _volume(folder / "volume-a.nii.gz")
    return folder


def _manifest(folder: Path, phases) -> Path:
    _volume(folder / "art.nii.gz")
    record = {"case_id": "c0", "phases": {**phases, "art": "art.nii.gz"}}
    (folder / "manifest.json").write_text(json.dumps({"cases": [record]}))
    return folder


NNUNET_SPEC = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
               "file_ending": ".nii.gz"}


def _dataset(folder: Path, spec, case: str = "c0") -> Path:
    (folder / "imagesTr").mkdir()
    _volume(folder / "c0.nii.gz").rename(folder / "imagesTr" / f"{case}_0000.nii.gz")  # a name too long to write to
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def _dicom_cohort(folder: Path, f) -> Path:
    """Case folders: c0's PV a good NIfTI file, c1's the DICOM series with a missing slice."""
    for case, pv in (("c0", f["pv"]), ("c1", f["dicom_gap"])):
        (folder / case).mkdir()
        (shutil.copytree if pv.is_dir() else shutil.copy)(pv, folder / case / "pv")
        if not pv.is_dir():
            (folder / case / "pv").rename(folder / case / "pv.nii.gz")
    return folder


def _snapshot(*roots: Path, skip: Path) -> dict:
    """Every file under ``roots`` but ``skip``: path -> sha256 (symlinks by their target)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path == skip or skip in path.parents:
                continue
            if path.is_symlink():
                found[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "folder"
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistake_is_refused_and_changes_nothing(data, tmp_path, case):
    build, named, says = CASES[case]
    out, scratch = tmp_path / "out", tmp_path / "in"
    scratch.mkdir()
    command = build(data, out, scratch)
    command, env = command if isinstance(command, tuple) else (command, None)
    before = _snapshot(data["root"], tmp_path, skip=out)
    done = run_script(*command, env=env)
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    print(f"{case}: {error}")  # the table of mistakes and answers, shown by pytest -rP
    assert error.startswith(f"paresseg-{command[0]}: error: ") and named in error and says in error, error
    assert _snapshot(data["root"], tmp_path, skip=out) == before  # inputs unchanged, nothing written beside them
    left = sorted(p.name for p in out.rglob("*")) if out.is_dir() else []
    assert left == (["import_report.json"] if case in WRITES_REPORT else []), left


def test_rename_unsafe_names_the_outputs_of_unsafe_case_ids_inside_the_output_folder(data, tmp_path):
    """The case ids refused above, renamed on request: every output stays in --output, each renaming is said."""
    cohort = _cohort(tmp_path / "in", [{"case_id": "../../x"}, {"case_id": "a\nb"}])
    out = tmp_path / "out"
    before = _snapshot(data["root"], tmp_path, skip=out)
    done = run_script(*_predict_folder(data, out, cohort, "--rename_unsafe"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'../../x' renamed '_.._x': it holds the character '/'" in done.stderr
    assert "'a\\nb' renamed 'a_b'" in done.stderr
    assert {"_.._x.nii.gz", "a_b.nii.gz"} <= {p.name for p in out.iterdir()}
    assert _snapshot(data["root"], tmp_path, skip=out) == before  # nothing written outside --output
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(case["case_id"] for case in summary["cases"]) == ["_.._x", "a_b"]
    # Two ids that rename alike are still refused, before any work.
    twins = _cohort(tmp_path / "twins", [{"case_id": "a/b"}, {"case_id": "a\\b"}])
    done = run_script(*_predict_folder(data, tmp_path / "out2", twins, "--rename_unsafe"))
    assert done.returncode == 2 and "case id 'a_b' appears twice" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
