"""The liver -> tumor cascade, and whole studies from NIfTI files and DICOM series folders."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax import absent_phases, model_io, models
from paresseg_jax.data.images import read_image
from paresseg_jax.errors import PareSegError
from paresseg_jax.infer import cascade, study

pytestmark = pytest.mark.xdist_group("infer_study")  # the module's saved model is built once


class LiverStandIn(nn.Module):
    """Liver where the centre PV slice is brighter than 0.5."""

    phases: tuple = ("pv",)
    in_channels: int = 3

    @nn.compact
    def __call__(self, pv, train=False):
        score = 40.0 * (pv[..., 1:2] - 0.5)
        return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)


class TumorStandIn(nn.Module):
    """Tumor where the brightest centre ART pixel in the 3x3 neighbourhood exceeds 0.5.

    Its output depends on neighbouring pixels, so it shows whether voxels
    outside the ROI were zeroed before the model saw them.
    """

    phases: tuple = ("pv", "art")
    in_channels: int = 3

    @nn.compact
    def __call__(self, pv, art, train=False):
        neighbourhood = nn.max_pool(art[..., 1:2], (3, 3), strides=(1, 1), padding="SAME")
        score = 40.0 * (neighbourhood - 0.5)
        return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)


def _cascade_images():
    pv = np.full((3, 24, 24), 0.2, np.float32)
    pv[:, 6:14, 6:14] = 0.8  # liver: rows/cols 6..13; ROI after 5x5 dilation: 4..15
    art = np.full_like(pv, 0.2)
    art[1, 8, 8] = 0.9  # tumor inside the liver
    art[1, 10, 17] = 0.9  # bright spot one pixel right of the ROI (col 16 is the first outside)
    art[1, 20, 20] = 0.9  # bright spot far outside
    return {"pv": pv, "art": art}


@pytest.mark.parametrize("mode", ["full", "tile"])
def test_cascade_gates_inputs_and_outputs(mode):
    images = _cascade_images()
    result = cascade.segment_study(
        images,
        (TumorStandIn(), {}),
        liver_model=(LiverStandIn(), {}),
        mode=mode,
        tile=16,
        stride=8,
    )
    liver = np.zeros((3, 24, 24), np.uint8)
    liver[:, 6:14, 6:14] = 1
    roi = np.zeros_like(liver)
    roi[:, 4:16, 4:16] = 1
    np.testing.assert_array_equal(result["liver"], liver)
    np.testing.assert_array_equal(result["roi"], roi)
    expected = np.zeros_like(liver)
    expected[1, 7:10, 7:10] = 1  # the 3x3 neighbourhood of the inside tumor pixel
    # The spots at (10, 17) and (20, 20) lie outside the ROI: removed from the output.
    np.testing.assert_array_equal(result["mask"], expected)
    assert not result["prob"][roi == 0].any()


def test_input_gate_hides_a_spot_next_to_the_roi():
    images = _cascade_images()
    images["art"][1, 10, 16] = 0.9  # first column outside the ROI: touches ROI column 15 through the 3x3 max
    gated = cascade.segment_study(images, (TumorStandIn(), {}), liver_model=(LiverStandIn(), {}))
    assert not gated["mask"][1, 9:12, 15].any()
    # Without a ROI the same spot does reach column 15: the gate is what removed it.
    ungated = cascade.segment_study(images, (TumorStandIn(), {}))
    assert ungated["mask"][1, 9:12, 15].all()
    assert ungated["roi"] is None and ungated["liver"] is None


def test_given_liver_mask_wins_over_liver_model_and_threshold_is_checked():
    images = _cascade_images()
    liver = np.zeros((3, 24, 24), np.uint8)
    liver[:, 18:22, 18:22] = 1  # a "liver" around the far spot only
    result = cascade.segment_study(images, (TumorStandIn(), {}), liver_model=(LiverStandIn(), {}), liver=liver)
    assert result["mask"][1, 20, 20] == 1 and result["mask"][1, 8, 8] == 0
    with pytest.raises(ValueError, match="threshold"):
        cascade.segment_study(images, (TumorStandIn(), {}), threshold=0.0)  # p >= 0: everything
    with pytest.raises(ValueError, match="single-phase PV"):
        cascade.segment_study(images, (TumorStandIn(), {}), liver_model=(TumorStandIn(), {}))


# ----------------------------------------------------------------------------- files


SHAPE = (5, 30, 34)  # (z, y, x)


def save_tiny_model(path, seed=0, phases=("pv", "art"), **spec_entries):
    """A registered model (DMP ResSeg, width 4) of `phases` with random weights, saved like paresseg-train does
    (``spec_entries`` added to its spec, e.g. the phase dropout it was trained with)."""
    spec = {"name": "dmp_resseg", "width": 4, "phases": list(phases), **spec_entries}
    module = models.create(spec["name"], width=4, phases=tuple(phases))
    inputs = [jnp.zeros((1, 32, 32, 3))] * len(phases)
    abstract = jax.eval_shape(lambda key: module.init(key, *inputs, train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(leaf_path, leaf):
        name = jax.tree_util.keystr(leaf_path)
        if "var" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "mean" in name or "num_batches" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return (0.3 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    model_io.save_model(path, spec, jax.tree_util.tree_map_with_path(fill, abstract))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "saved")


def _geometry_image(array, spacing, origin, direction):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _write_dicom_series(image, folder):
    """One CT slice per file with the position/orientation tags a DICOM reader needs."""
    folder.mkdir(parents=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_image = image[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.2.{z + 1}",
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_image)


def _study(tmp_path, pv_geometry, pv_as_dicom):
    rng = np.random.default_rng(1)
    hu = rng.integers(-100, 250, SHAPE).astype(np.int16)
    liver = np.zeros(SHAPE, np.uint8)
    liver[1:4, 8:22, 9:25] = 1
    tumor = np.zeros(SHAPE, np.uint8)
    tumor[2, 12:16, 14:18] = 1
    pv_image = _geometry_image(hu, *pv_geometry)
    if pv_as_dicom:
        pv_path = tmp_path / "pv_dicom"
        _write_dicom_series(pv_image, pv_path)
    else:
        pv_path = tmp_path / "pv.nii.gz"
        sitk.WriteImage(pv_image, str(pv_path))
    art_path, liver_path, gt_path = tmp_path / "art.nii.gz", tmp_path / "liver.nii.gz", tmp_path / "tumor.nii.gz"
    sitk.WriteImage(_geometry_image(hu[::-1].copy(), *pv_geometry), str(art_path))
    sitk.WriteImage(_geometry_image(liver, *pv_geometry), str(liver_path))
    sitk.WriteImage(_geometry_image(tumor, *pv_geometry), str(gt_path))
    return pv_path, art_path, liver_path, gt_path, liver


@pytest.mark.parametrize(
    "pv_as_dicom, geometry",
    [
        (False, ((0.7, 0.8, 5.0), (120.5, -80.25, 30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))),
        (True, ((0.65, 0.65, 7.0), (-100.0, 50.0, 20.0), (0, -1, 0, 1, 0, 0, 0, 0, 1))),
    ],
    ids=["nifti", "dicom"],
)
def test_predict_files_keeps_pv_geometry(tmp_path, tiny_model, pv_as_dicom, geometry):
    pv_path, art_path, liver_path, gt_path, liver = _study(tmp_path, geometry, pv_as_dicom)
    out = tmp_path / "out" / "mask.nii.gz"
    report = study.predict_files(
        {"pv": pv_path, "art": art_path},
        tiny_model,
        out,
        liver=liver_path,
        gt=gt_path,
        prob_out=tmp_path / "out" / "prob.nii.gz",
        overlay_out=tmp_path / "out" / "overlay.png",
        lesions_out=tmp_path / "out" / "lesions.csv",
        eval_config={"threshold": 0.5, "batch_size": 2},
        preprocess_config={"register": False},
    )
    pv_image = read_image(pv_path)
    for name in ("mask", "prob"):
        written = sitk.ReadImage(report[name])
        assert written.GetSize() == pv_image.GetSize() == SHAPE[::-1]
        np.testing.assert_allclose(written.GetSpacing(), geometry[0], atol=1e-4)
        np.testing.assert_allclose(written.GetOrigin(), geometry[1], atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), geometry[2], atol=1e-4)
        np.testing.assert_allclose(written.GetOrigin(), pv_image.GetOrigin(), atol=1e-4)
    # The written arrays are the in-memory prediction voxel for voxel (no flip or transpose on the way out).
    case, images, _ = study.read_study(
        {"pv": pv_path, "art": art_path}, liver=liver_path, preprocess_config={"register": False}
    )
    module, variables, _ = model_io.load_model(tiny_model)
    expected = cascade.segment_study(images, (module, variables), liver=case.liver, threshold=0.5, batch_size=2)
    prob = sitk.GetArrayFromImage(sitk.ReadImage(report["prob"]))
    np.testing.assert_allclose(prob, expected["prob"], atol=1e-6)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(report["mask"]))
    np.testing.assert_array_equal(mask, expected["mask"])
    roi = study.preprocess.liver_roi(liver)
    assert not mask[roi == 0].any() and 0 < mask.sum()
    assert report["roi"] == "liver mask" and set(report["metrics"]) >= {"dice", "hd95"}
    assert report["tumor_ml"] == pytest.approx(mask.sum() * np.prod(geometry[0]) / 1000)
    assert (tmp_path / "out" / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_lesions(report, tmp_path / "out" / "lesions.csv", mask, case)


def _check_lesions(report, table, mask, case):
    """The report's lesions and its CSV against the mask's 26-connected components, measured here."""
    import csv

    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert report["lesions"]["count"] == len(rows) == count > 0
    biggest = components == 1 + int(np.argmax(sizes))
    first = report["lesions"]["lesions"][0]
    assert first["volume_ml"] == pytest.approx(sizes.max() * np.prod(case.spacing) / 1000)
    assert first["hu"]["art"]["mean"] == pytest.approx(case.phases["art"][biggest].mean(), rel=1e-5)
    assert first["first_slice"] == np.flatnonzero(biggest.any(axis=(1, 2)))[0]
    assert float(rows[0]["pv_hu_mean"]) == pytest.approx(case.phases["pv"][biggest].mean(), abs=0.006)


def test_predict_files_refuses_a_missing_phase_on_a_model_trained_without_phase_dropout(tmp_path, tiny_model):
    pv_path, *_ = _study(tmp_path, ((1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), False)
    with pytest.raises(PareSegError, match="trained without phase dropout.*with --art"):
        study.predict_files({"pv": pv_path, "art": None}, tiny_model, tmp_path / "m.nii.gz")
    assert not (tmp_path / "m.nii.gz").exists()


def test_predict_files_runs_a_phase_dropout_model_without_art_and_says_so(tmp_path, tiny_model):
    model = tmp_path / "dropout_model"
    shutil.copytree(tiny_model, model)
    spec = json.loads((model / model_io.SPEC_FILE).read_text())
    (model / model_io.SPEC_FILE).write_text(json.dumps({**spec, absent_phases.SPEC_KEY: 0.3}))  # as training records it
    geometry = ((1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pv_path, _, liver_path, _, _ = _study(tmp_path, geometry, False)
    settings = {"threshold": 0.5, "batch_size": 2}
    report = study.predict_files({"pv": pv_path, "art": None}, model, tmp_path / "m.nii.gz", liver=liver_path,
                                 prob_out=tmp_path / "p.nii.gz", eval_config=settings)
    assert report["absent_phases"] == ["art"]
    case, images, _ = study.read_study({"pv": pv_path}, liver=liver_path)
    module, variables, _ = model_io.load_model(model)
    expected = cascade.segment_study({"pv": images["pv"], "art": np.zeros_like(images["pv"])}, (module, variables),
                                     liver=case.liver, **settings)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(report["prob"])), expected["prob"], atol=1e-6)


@pytest.mark.slow  # a subprocess (imports, compile); predict_files itself is tested above
def test_paresseg_predict_command_line(tmp_path, tiny_model):
    import json
    import subprocess
    import sys
    from pathlib import Path

    geometry = ((0.7, 0.8, 5.0), (10.0, -20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pv_path, art_path, liver_path, gt_path, _ = _study(tmp_path, geometry, pv_as_dicom=True)
    out = tmp_path / "pred"
    command = [
        sys.executable, "-m", "paresseg_jax_launch.predict", f"--pv={pv_path}", f"--art={art_path}", f"--model={tiny_model}",
        f"--liver={liver_path}", f"--gt={gt_path}", f"--out={out / 'mask.nii.gz'}", f"--prob={out / 'prob.nii.gz'}",
        f"--overlay={out / 'overlay.png'}", "--threshold=0.5", "--noregister", "--mode=tile", "--tile=16", "--stride=8",
    ]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", cwd=Path(__file__).parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["mask"] == str(out / "mask.nii.gz") and report["roi"] == "liver mask"
    assert "dice" in report["metrics"] and (out / "overlay.png").is_file() and (out / "prob.nii.gz").is_file()


def test_lesions_are_measured_on_the_registered_phases(tmp_path, tiny_model):
    """With registration on, the HU a lesion's ART statistics read are the registered ART the model saw."""
    geometry = ((1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pv_path, art_path, liver_path, _, _ = _study(tmp_path, geometry, False)
    segmenter = study.Segmenter.load(tiny_model, eval_config={"threshold": 0.5, "batch_size": 2},
                                     preprocess_config={"register": True})
    case = study.read_files({"pv": pv_path, "art": art_path}, liver=liver_path)
    result, images, registration = segmenter.segment_case(case, liver=case.liver)
    assert "art" in registration
    np.testing.assert_allclose(study.preprocess.hu_window(result["phases_hu"]["art"]), images["art"], atol=1e-6)
    assert not np.allclose(result["phases_hu"]["art"], case.phases["art"])  # moved by the registration
    np.testing.assert_array_equal(result["phases_hu"]["pv"], case.phases["pv"])


def test_predict_files_applies_and_records_the_stored_postprocessing(tmp_path, tiny_model):
    """postprocessing.json beside the model (as paresseg-postprocess writes it): lesions under its volume go
    (partial removals: tests/test_postprocess.py)."""
    from scipy import ndimage

    from paresseg_jax import postprocess

    geometry = ((0.7, 0.8, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pv_path, art_path, liver_path, _, _ = _study(tmp_path, geometry, False)
    settings = dict(eval_config={"threshold": 0.5, "batch_size": 2}, preprocess_config={"register": False})
    plain = study.predict_files({"pv": pv_path, "art": art_path}, tiny_model, tmp_path / "plain.nii.gz",
                                liver=liver_path, **settings)
    assert plain["postprocessing"] is None
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain.nii.gz")))
    labels, _ = ndimage.label(before, structure=np.ones((3, 3, 3)))
    sizes_ml = np.bincount(labels.ravel())[1:] * np.prod(geometry[0]) / 1000
    assert len(sizes_ml) >= 1
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for min_ml in (0.99 * float(sizes_ml.min()), 1.01 * float(sizes_ml.max())):  # all lesions stay; then all go
        postprocess.write(model, {"settings": {**postprocess.NONE, "tumor_min_ml": min_ml}})
        report = study.predict_files({"pv": pv_path, "art": art_path}, model, tmp_path / "after.nii.gz",
                                     liver=liver_path, **settings)
        assert report["postprocessing"]["tumor_min_ml"] == min_ml
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "after.nii.gz")))
        np.testing.assert_array_equal(after > 0, np.isin(labels, 1 + np.flatnonzero(sizes_ml >= min_ml)))
        assert report["lesions"]["count"] == int((sizes_ml >= min_ml).sum())


def check_stage_times(times, total_s, ran):
    """Every stage named, those in ``ran`` timed (>= 0) and the others listed as not run (0), their sum within
    the measured wall time ``total_s`` and covering most of it."""
    from paresseg_jax import stage_times

    assert list(times["seconds"]) == list(stage_times.STAGES)
    assert set(times["not_run"]) == set(stage_times.STAGES) - set(ran)
    assert all(s >= 0 for s in times["seconds"].values())
    assert all(times["seconds"][name] == 0 for name in times["not_run"])
    assert 0.8 * total_s <= sum(times["seconds"].values()) <= times["total_s"] <= total_s
    assert times["forward_flops"] > 0 and times["forward_calls"] > 0


def test_predict_files_records_every_stage(tmp_path, tiny_model):
    """A study that runs every stage (registration, a liver model, stored postprocessing): each one's seconds,
    compilation apart from the liver and tumor stages (a folder's cases without them: test_predict_folder)."""
    import time

    from paresseg_jax import postprocess

    geometry = ((1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pv_path, art_path, _, gt_path, _ = _study(tmp_path, geometry, False)
    model, liver_model = tmp_path / "model", save_tiny_model(tmp_path / "liver", phases=("pv",))
    shutil.copytree(tiny_model, model)
    postprocess.write(model, {"settings": {**postprocess.NONE, "tumor_min_ml": 0.001}})
    segmenter = study.Segmenter.load(model, liver_model, {"threshold": 0.5, "batch_size": 2}, {"register": True})
    start = time.perf_counter()
    report = study.predict_files({"pv": pv_path, "art": art_path}, segmenter, tmp_path / "mask.nii.gz", gt=gt_path)
    check_stage_times(report["stage_times"], time.perf_counter() - start, ran=list(report["stage_times"]["seconds"]))
    assert report["stage_times"]["seconds"]["compilation"] > 0 and report["roi"] == "liver model"
