"""README's paresseg-make-phantom, -predict and -evaluate commands end to end, on stand-in models with known masks.

One phantom cohort (written by ``paresseg-make-phantom --phases``) and two
saved stand-ins (``standin_models``) serve the module: a liver model (PV above
0.65 after windowing) and a tumor model (ART above PV by 0.1); masks are
non-empty, and every equality is checked beside a setting that must differ.
"""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from standin_models import command, save_standin, standin_runs

pytestmark = pytest.mark.xdist_group("documented_commands")
CASES = ("case_0000", "case_0001")
LIVER_OFFSET = 0.65
PROBE = {"context": 2.0, "tilt": 1.0, "conv": 1.0}  # flips, crops, tiles and the conv setting change its output
# Two paresseg-predict runs and the settings each passes (flag values as eval_config values).
SPEED = {"tta": True, "crop_to_roi": True, "roi_margin": 8, "batch_pixels": 128 * 128, "conv_impl": "fast"}
TILES = {"mode": "tile", "tile": 64, "stride": 32, "weighting": "gaussian"}
OTHER = {"tta": False, "crop_to_roi": False, "roi_margin": 32, "batch_pixels": 0, "conv_impl": "direct", "mode": "full",
         "tile": 96, "stride": 64, "weighting": "pyramid"}  # each setting's default or another valid value


def array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def windowed(path):
    from paresseg_jax.data.preprocess import hu_window

    return hu_window(array(path).astype(np.float32))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("documented")
    command("paresseg-make-phantom", f"--out={root / 'phantom'}", "--num_cases=2", "--size=128", "--slices=6",
            "--phases=pv,art,nc,dl", "--num_folds=2")
    save_standin(root / "tumor", offset=0.1)
    save_standin(root / "liver", phases=("pv",), rule="bright", offset=LIVER_OFFSET)
    save_standin(root / "probe", offset=0.1, gain=20.0, **PROBE)
    return root


@pytest.fixture(scope="module")
def cascade_preds(cohort):
    """README's folder command: paresseg-predict --input --output --model --liver_model."""
    out = cohort / "preds"
    command("paresseg-predict", f"--input={cohort / 'phantom'}", f"--output={out}", f"--model={cohort / 'tumor'}",
            f"--liver_model={cohort / 'liver'}", "--noregister")
    return out


def test_make_phantom_writes_every_phase_asked_on_the_pv_grid(cohort):
    for case in CASES:
        folder = cohort / "phantom" / case
        pv = sitk.ReadImage(str(folder / "pv.nii.gz"))
        for phase in ("art", "nc", "dl"):
            image = sitk.ReadImage(str(folder / f"{phase}.nii.gz"))
            assert image.GetSize() == pv.GetSize() == (128, 128, 6) and image.GetSpacing() == pv.GetSpacing()
            assert not np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(pv))
    liver_hu = array(cohort / "phantom" / CASES[0] / "pv.nii.gz")[array(cohort / "phantom" / CASES[0] / "liver.nii.gz") > 0]
    nc_hu = array(cohort / "phantom" / CASES[0] / "nc.nii.gz")[array(cohort / "phantom" / CASES[0] / "liver.nii.gz") > 0]
    assert np.median(nc_hu) < np.median(liver_hu) - 20  # the liver enhances from NC (55 HU) to PV (110 HU)


def test_predict_cascade_takes_label_1_from_the_liver_model(cohort, cascade_preds):
    """Label 1 is the liver model's mask, not the case's liver; tumor (2) lies inside its dilated ROI."""
    for case in CASES:
        labels = array(cascade_preds / f"{case}.nii.gz")
        liver = windowed(cohort / "phantom" / case / "pv.nii.gz") > LIVER_OFFSET  # the stand-in's rule
        roi = ndimage.binary_dilation(liver, np.ones((1, 5, 5), bool))
        gt_liver = array(cohort / "phantom" / case / "liver.nii.gz") > 0
        np.testing.assert_array_equal(labels == 1, liver & (labels != 2))
        assert (labels == 2).any() and not (labels == 2)[~roi].any()
        assert (labels == 1).sum() > 1000 and ((labels == 1) != gt_liver).sum() > 500  # not the case's liver mask


def test_predict_one_study_as_readme_shows(cohort, cascade_preds, tmp_path):
    """README's one-study command: the mask is the folder run's tumor label, with its probability and overlay."""
    case = cohort / "phantom" / CASES[1]
    done = command("paresseg-predict", f"--pv={case / 'pv.nii.gz'}", f"--art={case / 'art.nii.gz'}",
                   f"--model={cohort / 'tumor'}", f"--liver_model={cohort / 'liver'}", f"--out={tmp_path / 'mask.nii.gz'}",
                   f"--prob={tmp_path / 'prob.nii.gz'}", f"--overlay={tmp_path / 'overlay.png'}", "--noregister")
    mask, prob = array(tmp_path / "mask.nii.gz"), array(tmp_path / "prob.nii.gz")
    np.testing.assert_array_equal(mask, array(cascade_preds / f"{CASES[1]}.nii.gz") == 2)
    assert mask.any() and np.array_equal(mask > 0, prob >= 0.6)
    assert (tmp_path / "overlay.png").stat().st_size > 1000 and '"roi": "liver model"' in done.stdout


def _flags(settings):
    return [f"--{k}" if v is True else f"--{k}={v}" for k, v in settings.items()]


def test_predict_liver_stage_flags_reach_the_liver_model(cohort, tmp_path):
    """--liver_scale changes the liver the report measures; out-of-range liver stage values are refused."""
    case = cohort / "phantom" / CASES[1]
    study = [f"--pv={case / 'pv.nii.gz'}", f"--art={case / 'art.nii.gz'}", f"--model={cohort / 'tumor'}",
             f"--liver_model={cohort / 'liver'}", "--noregister", f"--out={tmp_path / 'mask.nii.gz'}"]

    def liver_ml(*flags):
        printed = command("paresseg-predict", *study, *flags).stdout
        return json.loads(printed[printed.index("{"):])["liver_ml"]

    assert liver_ml() > 0 and liver_ml("--liver_scale=2") != liver_ml()
    for flag in ("--liver_slice_step=0", "--liver_scale=0"):
        refused = command("paresseg-predict", *study, flag, status=2)  # a usage error
        assert "out of range" in refused.stderr + refused.stdout


@pytest.mark.parametrize("settings", [SPEED, TILES], ids=["speed", "tiles"])
def test_predict_settings_reach_the_segmentation(cohort, settings, tmp_path):
    """Each flag's value is what the command segments with (its probabilities equal predict_files' with that
    setting), and another value of any one changes them, except --batch_pixels (slices per pass only)."""
    from paresseg_jax.infer import study

    case = cohort / "phantom" / CASES[0]
    phases, liver = {p: case / f"{p}.nii.gz" for p in ("pv", "art")}, case / "liver.nii.gz"
    command("paresseg-predict", *[f"--{p}={path}" for p, path in phases.items()], f"--model={cohort / 'probe'}",
            f"--liver={liver}", f"--out={tmp_path / 'cli.nii.gz'}", f"--prob={tmp_path / 'cli_prob.nii.gz'}",
            "--noregister", *_flags(settings))
    expected = array(tmp_path / "cli_prob.nii.gz")

    def prob(**config):
        segmenter = study.Segmenter.load(cohort / "probe", None, config).with_registration(False)
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.nii.gz"
        study.predict_files(phases, segmenter, out, liver=liver, prob_out=out.with_name("p" + out.name))
        assert array(out).any()  # a non-empty mask under every setting
        return array(out.with_name("p" + out.name))

    np.testing.assert_array_equal(prob(**settings), expected)
    for name in settings:
        other = prob(**{**settings, name: OTHER[name]})
        if name == "batch_pixels":
            np.testing.assert_array_equal(other, expected)
        else:
            assert not np.array_equal(other, expected), f"--{name} changed nothing"


def test_batch_pixels_caps_the_slices_per_forward_pass(cohort, monkeypatch):
    from paresseg_jax.infer import predict, study

    compiled, shapes = predict._compiled_forward, []
    monkeypatch.setattr(predict, "_compiled_forward", lambda *args: shapes.append(args[-1]) or compiled(*args))
    case = cohort / "phantom" / CASES[0]
    images = {p: windowed(case / f"{p}.nii.gz") for p in ("pv", "art")}
    module, variables = study.Segmenter.load(cohort / "tumor").tumor.members[0]
    for batch_pixels in (0, 2 * 128 * 128):
        predict.predict_volume(module, variables, images, batch_size=4, batch_pixels=batch_pixels)
    assert [s[0] for s in shapes] == [4, 2]


def _voe(pred, truth):
    return 1 - np.count_nonzero(pred & truth) / np.count_nonzero(pred | truth)


def test_evaluate_predictions_with_a_tumor_label_and_a_metric(cohort, cascade_preds, tmp_path):
    """Label maps with tumor 3 are scored with --tumor_label=3 as paresseg-predict's (tumor 2) are, refused without;
    --metric=voe tests the VOEs, whose means are checked against VOEs computed here."""
    relabelled = tmp_path / "tumor_3"
    relabelled.mkdir()
    for case in CASES:
        image = sitk.ReadImage(str(cascade_preds / f"{case}.nii.gz"))
        moved = sitk.GetImageFromArray(np.where(sitk.GetArrayFromImage(image) == 2, 3, sitk.GetArrayFromImage(image)))
        moved.CopyInformation(image)
        sitk.WriteImage(moved, str(relabelled / f"{case}.nii.gz"))
    phantom = cohort / "phantom"
    refused = command("paresseg-evaluate", f"--predictions={relabelled}", f"--cohort={phantom}", status=2)
    assert "has labels [0, 1, 3]" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    done = command("paresseg-evaluate", f"--predictions={relabelled}", f"--cohort={phantom}", "--tumor_label=3",
                   f"--run=as_predicted={cascade_preds}", "--metric=voe")
    truths = [array(phantom / case / "tumor.nii.gz") > 0 for case in CASES]
    tumors = [array(cascade_preds / f"{case}.nii.gz") == 2 for case in CASES]
    voe = np.mean([_voe(p, t) for p, t in zip(tumors, truths)])
    assert all(p.any() for p in tumors) and 0 < voe < 1
    assert f"paired t-test on voe (2 cases): as_predicted {voe:.4f} vs tumor_3 {voe:.4f}" in done.stdout


def test_evaluate_refuses_predictions_on_another_grid_unless_resample_masks(cohort, cascade_preds, tmp_path):
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    for case in CASES:
        image = sitk.ReadImage(str(cascade_preds / f"{case}.nii.gz"))
        spacing = [s * f for s, f in zip(image.GetSpacing(), (2, 2, 1))]
        size = [n // f for n, f in zip(image.GetSize(), (2, 2, 1))]
        sitk.WriteImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                                      spacing, image.GetDirection()), str(coarse / f"{case}.nii.gz"))
    (coarse / "summary.json").write_text(json.dumps({"info": {"labels": {"tumor": 2}}, "cases": [], "summary": None}))
    refused = command("paresseg-evaluate", f"--predictions={coarse}", f"--cohort={cohort / 'phantom'}", status=2)
    assert "--resample_masks" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    done = command("paresseg-evaluate", f"--predictions={coarse}", f"--cohort={cohort / 'phantom'}", "--resample_masks")
    scored = json.loads((coarse / "scores.json").read_text())["cases"]  # beside the summary.json it did not write
    assert len(scored) == 2 and all(r["metrics"]["dice"] > 0 for r in scored) and "| coarse " in done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_train_support import write_tiny_cache

    root = tmp_path_factory.mktemp("runs")
    return standin_runs(write_tiny_cache(root / "cache"), root)


def test_evaluate_a_run_with_the_cascade_and_overlays(runs):
    run, liver = runs
    command("paresseg-evaluate", f"--run=standin={run}", f"--liver_workdir={liver}", "--overlays")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["info"]["roi"] == "cascade" and summary["summary"]["all"]["dpc"] > 0.9
    test_cases = json.loads((run / "split.json").read_text())["test"]
    assert sorted(p.stem for p in (run / "overlays").glob("*.png")) == sorted(test_cases)


def test_evaluate_run_rescores_a_stored_summary_that_scored_something_else(runs, tmp_path):
    """--run on a scored workdir reuses its summary.json only when it scored what scoring would now: a summary
    left from another protocol (here its threshold edited) is scored again, with the liver run it names."""
    run = shutil.copytree(runs[0], tmp_path / "run")
    command("paresseg-evaluate", f"--run=standin={run}", f"--liver_workdir={runs[1]}")
    scored = json.loads((run / "summary.json").read_text())
    again = command("paresseg-evaluate", f"--run=standin={run}")  # current: reused as it is
    assert json.loads((run / "summary.json").read_text()) == scored
    stale = json.loads((run / "summary.json").read_text())
    stale["info"]["provenance"]["protocol"]["threshold"] = ">= 0.5"
    stale["summary"]["all"]["dpc"] = 0.123  # a number the code never computed
    (run / "summary.json").write_text(json.dumps(stale))
    rescored = command("paresseg-evaluate", f"--run=standin={run}")
    assert json.loads((run / "summary.json").read_text())["summary"] == scored["summary"]
    assert "12.30" not in rescored.stdout and "12.30" not in again.stdout


def test_evaluate_refuses_a_run_whose_split_overlaps(runs, tmp_path):
    """A split.json edited so that a test case is also a training case: one line, exit 2, nothing scored."""
    run = shutil.copytree(runs[0], tmp_path / "run", ignore=shutil.ignore_patterns("summary.json"))  # unscored
    split = json.loads((run / "split.json").read_text())
    split["train"].append(split["test"][0])
    (run / "split.json").write_text(json.dumps(split))
    refused = command("paresseg-evaluate", f"--run=edited={run}", "--roi=oracle_gt_liver", status=2)
    assert "train, validation and test case ids overlap" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (run / "summary.json").exists()


def test_bench_extent_on_a_run(runs, tmp_path):
    """The tiny cache's 40 px slices are narrower than the crop grid (64 px): the crop is the whole slice."""
    run, liver = runs
    done = command("paresseg-bench", "extent", f"--run={run}", f"--liver_workdir={liver}",
                   f"--json={tmp_path / 'extent.json'}")
    result = json.loads((tmp_path / "extent.json").read_text())
    assert result["roi"] == "cascade" and len(result["cases"]) == len(json.loads((run / "split.json").read_text())["test"])
    for case in result["cases"]:
        assert case["dice_whole"] == case["dice_crop"] > 0.9 and case["changed_voxels"] == 0
    assert "whole slices vs ROI crop" in done.stdout


def test_convert_command_to_pth_and_back_at_width_4(tmp_path):
    """README's paresseg-convert: a saved model -> .pth (the command; both ways, slow: test_interop_torch) -> saved
    model gives the same weights, bit for bit (random weights: a dropped or swapped tensor shows)."""
    import jax

    from paresseg_jax import model_io, models

    pytest.importorskip("torch", reason="paresseg-convert needs the torch extra (part of the test extra)")
    from paresseg_jax.interop import torch as interop

    module = models.create("resseg", width=4)
    variables = models.init_variables(module, jax.random.key(3))
    model_io.save_model(tmp_path / "saved", {"name": "resseg", "width": 4}, variables)
    command("paresseg-convert", f"--input={tmp_path / 'saved'}", f"--output={tmp_path / 'model.pth'}")
    interop.torch_checkpoint_to_saved_model(tmp_path / "model.pth", tmp_path / "back")  # what the way back calls
    _, back, spec = model_io.load_model(tmp_path / "back")
    assert spec["name"] == "resseg" and spec["width"] == 4
    for (path, a), (_, b) in zip(*(jax.tree_util.tree_leaves_with_path(v) for v in (variables, back))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    assert len(jax.tree_util.tree_leaves(back)) == len(jax.tree_util.tree_leaves(variables)) > 10
