"""Writes that fail (a full disk, a short write that reports success) and runs that stop half-way (a case with bad
voxels, Ctrl-C): one error naming the file, nothing partial, outputs that go together together or not at all.

Faults are injected into the writers in-process, and the model's work is
replaced by a canned result where only the writing is under test; one test
has the kernel itself cut a launcher's writes short (a file size limit: no
small file system to mount or fill).
"""

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_studies import Grid, Study, write_ct_series
from test_data_safety import GEOMETRY, SHAPE, run_script
from test_infer_study import save_tiny_model

from paresseg_jax import atomic, cli
from paresseg_jax.data import declared_size
from paresseg_jax.data.images import read_image, read_image_header, write_image
from paresseg_jax.errors import BadInputError, OutputError, PareSegError
from paresseg_jax.infer import folder, study

pytestmark = pytest.mark.xdist_group("data_safety_writes")  # the module's saved model is built once


def _image(path: Path, fill: float = 0.0) -> Path:
    return write_image(np.full(SHAPE, fill, np.float32), GEOMETRY, path)


RUN_FILES = [".summary.lock", "finished.jsonl", "lesions.csv", "report.md", "summary.json"]  # a folder run's own files


def _canned(case, liver=None, progress=None, sources=None, whole_phases=False):
    """What ``Segmenter.segment_case`` returns, without running a model: no tumor, no ROI."""
    zeros = np.zeros(case.shape, np.uint8)
    result = {"mask": zeros, "prob": zeros.astype(np.float32), "labels": zeros, "liver": None, "roi": None,
              "phases_hu": {"pv": zeros.astype(np.float32)}}
    return result, {"pv": zeros.astype(np.float32)}, {}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model", phases=("pv",))


def test_short_write_that_reports_success_is_an_error(monkeypatch, tmp_path):
    real = sitk.WriteImage

    def cut_short(image, path, *args, **kwargs):  # a full disk under a writer that does not check
        real(image, path, *args, **kwargs)
        os.truncate(path, os.path.getsize(path) // 2)

    monkeypatch.setattr(sitk, "WriteImage", cut_short)
    with pytest.raises(OutputError, match=r"mask\.nii\.gz: was written incomplete"):
        _image(tmp_path / "mask.nii.gz")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_failed_write_is_one_error_naming_the_file(monkeypatch, tmp_path, code):
    def fail(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 10)  # a few bytes made it
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(OutputError, match=rf"prob\.nii\.gz: cannot be written \({os.strerror(code)}\)"):
        _image(tmp_path / "prob.nii.gz")
    assert not list(tmp_path.iterdir())


def test_short_text_write_is_an_error(monkeypatch, tmp_path):
    class Short:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            return self.file.write(data[: len(data) // 2])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(atomic, "open", Short, raising=False)
    with pytest.raises(OutputError, match=r"summary\.json: cannot be written"):
        atomic.write_text(tmp_path / "summary.json", json.dumps({"cases": []}))
    assert not list(tmp_path.iterdir())


def test_mask_and_probability_appear_together_or_not_at_all(monkeypatch, tmp_path, model):
    pv, out = _image(tmp_path / "in" / "pv.nii.gz"), tmp_path / "out"
    monkeypatch.setattr(study.Segmenter, "segment_case", lambda self, case, **kw: _canned(case, **kw))
    real, calls = write_image, []

    def full_after_first(array, geometry, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(array, geometry, path)

    monkeypatch.setattr(study, "write_image", full_after_first)
    with pytest.raises(OutputError, match=r"out/prob\.nii\.gz: cannot be written \(No space left on device\)"):
        study.predict_files({"pv": pv}, model, out / "mask.nii.gz", prob_out=out / "prob.nii.gz")
    assert len(calls) == 2 and not list(out.iterdir())  # the mask was written, then taken back


def _two_cases(root: Path, second_fill: float) -> Path:
    for case, fill in (("c0", 0.0), ("c1", second_fill)):
        _image(root / case / "pv.nii.gz", fill)
    return root


def test_case_with_bad_voxels_is_recorded_and_the_others_finish(monkeypatch, tmp_path, model):
    monkeypatch.setattr(study.Segmenter, "segment_case", lambda self, case, **kw: _canned(case, **kw))
    summary = folder.predict_folder(_two_cases(tmp_path / "in", np.nan), tmp_path / "out", model)
    records = {r["case_id"]: r for r in summary["cases"]}
    assert "NaN or infinite voxels" in records["c1"]["failed"] and "failed" not in records["c0"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["c0.nii.gz", *RUN_FILES])


def test_ctrl_c_keeps_finished_cases_and_writes_their_summary(monkeypatch, tmp_path, model):
    calls = []

    def interrupted_at_second(self, case, **kw):
        calls.append(case.case_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _canned(case, **kw)

    monkeypatch.setattr(study.Segmenter, "segment_case", interrupted_at_second)
    with pytest.raises(PareSegError, match="interrupted after 1 of 2 cases"):
        folder.predict_folder(_two_cases(tmp_path / "in", 0.0), tmp_path / "out", model)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["case_id"] for r in summary["cases"]] == ["c0"] and summary["info"]["interrupted"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["c0.nii.gz", *RUN_FILES])


def test_folder_run_with_a_failed_case_exits_2_at_the_end(tmp_path, model):
    done = run_script("predict", f"--input={_two_cases(tmp_path / 'in', np.nan)}", f"--output={tmp_path / 'out'}",
                      f"--model={model}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "1 of 2 cases failed (c1;" in done.stderr.strip().splitlines()[-1]
    assert "c1  FAILED:" in done.stdout and (tmp_path / "out" / "c0.nii.gz").is_file()


def _gapped_study(root: Path, patient: str = "P1", drop: int | None = 3) -> tuple[Path, np.ndarray, Grid]:
    grid = Grid(shape=(6, 32, 32))
    hu = (np.arange(6, dtype=np.int16)[:, None, None] * 100 + np.zeros((6, 32, 32), np.int16))
    folder = write_ct_series(root, Study(patient_id=patient), hu, grid, number=2, description="PV portal venous")
    if drop is not None:
        sorted(folder.glob("*.dcm"))[drop].unlink()
    return root, hu, grid


def test_import_with_allow_gaps_resamples_with_a_warning(tmp_path):
    source, hu, grid = _gapped_study(tmp_path / "dicom")
    done = run_script("import-dicom", f"--input={source}", f"--output={tmp_path / 'cohort'}", "--allow_gaps")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resampled onto even 2.50 mm slices (--allow_gaps)" in done.stderr
    image = sitk.ReadImage(str(tmp_path / "cohort" / "P1" / "pv.nii.gz"))
    assert image.GetSpacing()[2] == pytest.approx(grid.spacing[2]) and image.GetSize()[2] == 6
    # the missing slice 3 is interpolated between slices 2 and 4 (HU 200 and 400), the others are as scanned
    assert sitk.GetArrayFromImage(image)[:, 0, 0] == pytest.approx(hu[:, 0, 0].astype(float))


def test_import_of_patient_id_dot_stays_inside_the_output(tmp_path):
    source, _, _ = _gapped_study(tmp_path / "dicom", patient=".", drop=None)
    (tmp_path / "cohort").mkdir()
    done = run_script("import-dicom", f"--input={source}", f"--output={tmp_path / 'cohort'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cohort" / "_" / "pv.nii.gz").is_file() and (tmp_path / "cohort" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "dicom"]


def test_predict_with_allow_gaps_resamples_with_a_warning(tmp_path, model):
    source, _, grid = _gapped_study(tmp_path / "dicom")
    series = next(p.parent for p in source.rglob("*.dcm"))
    done = run_script("predict", f"--pv={series}", f"--model={model}", f"--out={tmp_path / 'mask.nii.gz'}",
                      "--allow_gaps")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resampled onto even 2.50 mm slices (--allow_gaps)" in done.stderr
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert mask.GetSize()[2] == 6 and mask.GetSpacing()[2] == pytest.approx(grid.spacing[2])


def test_folder_case_label_map_and_probabilities_appear_together(monkeypatch, tmp_path, model):
    cohort = _two_cases(tmp_path / "in", 0.0)
    monkeypatch.setattr(study.Segmenter, "segment_case", lambda self, case, **kw: _canned(case, **kw))
    real, calls = write_image, []

    def full_at_probabilities(array, geometry, path):
        calls.append(path)
        if array.dtype == np.float32:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(array, geometry, path)

    monkeypatch.setattr(folder, "write_image", full_at_probabilities)
    with pytest.raises(OutputError, match=r"c0_tumor_prob\.nii\.gz: cannot be written"):
        folder.predict_folder(cohort, tmp_path / "out", model, save_probabilities=True)
    assert len(calls) == 2 and not list((tmp_path / "out").iterdir())  # c0's label map taken back with it


def test_ctrl_c_is_one_line(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        cli._launcher_main(interrupted)([])
    assert stop.value.code == cli.INTERRUPTED_STATUS
    assert capsys.readouterr().err.strip().endswith(": interrupted")


def test_header_larger_than_the_memory_is_refused_before_reading(monkeypatch, tmp_path):
    path = _image(tmp_path / "pv.nii.gz")
    monkeypatch.setattr(declared_size, "available_memory", lambda: 1000)  # bytes: less than 8 x 32 x 32 floats
    with pytest.raises(BadInputError, match=r"pv\.nii\.gz: image of \(32, 32, 8\) voxels needs .* more than"):
        read_image_header(path)
    with pytest.raises(BadInputError, match="more than"):
        read_image(path)


def test_dicom_series_larger_than_the_memory_is_refused_before_reading(monkeypatch, tmp_path):
    """Each slice file is honest, so only the series as a whole (columns x rows x slices) can be too large."""
    source, _, _ = _gapped_study(tmp_path / "dicom", drop=None)
    series = next(p.parent for p in source.rglob("*.dcm"))
    assert read_image(series).GetSize() == (32, 32, 6)  # the memory this machine has: read
    monkeypatch.setattr(declared_size, "available_memory", lambda: 32 * 32 * 6 * 4 - 1)  # one byte short as float32
    for read in (read_image_header, read_image):
        with pytest.raises(BadInputError, match=r"image of \(32, 32, 6\) voxels needs .* more than"):
            read(series)


def test_writer_error_is_one_error_naming_the_file(monkeypatch, tmp_path):
    def fail(image, path, *args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: itkNiftiImageIO.cxx:2386:\n"
                           "ITK ERROR: NiftiImageIO: ERROR: nifti library failed to write image")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(OutputError, match=r"mask\.nii\.gz: cannot be written \(ITK ERROR: .*failed to write image\)"):
        _image(tmp_path / "mask.nii.gz")
    assert not list(tmp_path.iterdir())


# Sets a file size limit, then becomes the launcher: the kernel refuses to grow a file past it (EFBIG, with
# SIGXFSZ ignored), a real short write through every layer (SimpleITK's writer, zlib, the OS) as a full disk
# gives one. (A preexec_fn would fork this process, whose JAX threads make forking unsafe.)
LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "os.execv(sys.argv[2], sys.argv[2:])")


@pytest.mark.parametrize("limit, cut", [(100, "mask"), (600, "prob")])  # below any NIfTI; the mask fits, not the map
def test_a_real_short_write_is_one_line_and_leaves_nothing(tmp_path, model, limit, cut):
    """SimpleITK's writer does not report the kernel's refusal: the read-back finds the cut gzip stream, the
    error names the output (not its temporary), and a mask written before the cut probabilities is taken back."""
    pv, out = _image(tmp_path / "in" / "pv.nii.gz"), tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), str(Path(sys.executable).parent / "paresseg-predict"),
         f"--pv={pv}", f"--model={model}", f"--out={out / 'mask.nii.gz'}", f"--prob={out / 'prob.nii.gz'}"],
        env={**os.environ, "PARESSEG_HUGE_PAGES": "0", "PARESSEG_XLA_CACHE": "0", "JAX_PLATFORMS": "cpu"},
        capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert re.search(rf"out/{cut}\.nii\.gz: (cannot be written|was written incomplete) \(", error), error
    assert not list(out.iterdir())  # neither output, nor a temporary
