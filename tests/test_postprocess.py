"""Postprocessing steps on hand-built masks, and their choice on validation cases (paresseg_jax.postprocess)."""

import numpy as np
import pytest

from paresseg_jax import postprocess
from paresseg_jax.errors import PareSegError

SPACING = (2.0, 1.0, 1.0)  # 2 mm^3 voxels: 500 voxels per ml


def _liver():
    liver = np.zeros((6, 40, 40), np.uint8)
    liver[1:5, 5:30, 5:30] = 1
    liver[2:4, 12:16, 12:16] = 0  # an enclosed hole (a tumor the liver model missed)
    liver[2:4, 35:38, 35:38] = 1  # a stray blob of 18 voxels
    return liver


def _tumor():
    tumor = np.zeros((6, 40, 40), np.uint8)
    tumor[2:4, 12:16, 12:16] = 1  # in the hole: touches the liver around it, 32 voxels = 0.064 ml
    tumor[1:5, 20:27, 20:27] = 1  # 196 voxels = 0.392 ml, inside
    tumor[1, 33:35, 1:3] = 1  # 4 voxels outside the liver
    return tumor


def test_each_step_on_hand_built_masks():
    liver, tumor = _liver(), _tumor()
    out_liver, out_tumor = postprocess.apply(liver, tumor, SPACING, {"liver_largest_component": True})
    assert out_liver.sum() == liver.sum() - 18 and np.array_equal(out_tumor, tumor)
    out_liver, _ = postprocess.apply(liver, tumor, SPACING, {"liver_fill_holes": True})
    assert out_liver.sum() == liver.sum() + 32 and out_liver[2:4, 12:16, 12:16].all()
    _, out_tumor = postprocess.apply(liver, tumor, SPACING, {"tumor_inside_liver": True})
    assert out_tumor.sum() == tumor.sum() - 4 and not out_tumor[1, 33:35, 1:3].any()
    _, out_tumor = postprocess.apply(liver, tumor, SPACING, {"tumor_min_ml": 0.1})
    assert out_tumor.sum() == 196  # 0.064 ml and 0.008 ml lesions removed
    given, _ = postprocess.apply(liver, tumor, SPACING, {"liver_fill_holes": True}, liver_predicted=False)
    assert np.array_equal(given, liver)  # a liver mask the user gave is never changed
    none_liver, out_tumor = postprocess.apply(None, tumor, SPACING, {"tumor_inside_liver": True})
    assert none_liver is None and np.array_equal(out_tumor, tumor)


def _case(truth_extra_blob: bool):
    tumor_gt = np.zeros((6, 40, 40), np.uint8)
    tumor_gt[1:5, 20:27, 20:27] = 1
    tumor = tumor_gt.copy()
    tumor[1, 8:10, 8:10] = 1  # a 4-voxel false positive (0.008 ml) inside the liver
    if truth_extra_blob:
        tumor_gt[1, 8:10, 8:10] = 1  # ... unless the truth has it too
    liver_gt = np.zeros_like(tumor)
    liver_gt[1:5, 5:30, 5:30] = 1
    return {"liver": _liver(), "tumor": tumor, "liver_gt": liver_gt, "tumor_gt": tumor_gt, "spacing_zyx": SPACING}


def test_choice_keeps_only_what_helps_on_validation():
    choice = postprocess.choose([_case(False), _case(False)])
    assert choice["settings"] == {"liver_largest_component": True, "liver_fill_holes": True,
                                  "tumor_inside_liver": False, "tumor_min_ml": 0.1}
    before, after = choice["validation"]["mean_dice_before"], choice["validation"]["mean_dice_after"]
    dice = 2 * 196 / (196 + 200)
    assert before["tumor"] == pytest.approx(dice) and after["tumor"] == 1.0
    assert after["liver"] > before["liver"]
    # the small blob is real in the truth: removing it would hurt, so nothing is removed
    assert postprocess.choose([_case(True)])["settings"]["tumor_min_ml"] == 0.0
    with pytest.raises(PareSegError, match="no validation cases"):
        postprocess.choose([])


def test_choice_is_stored_beside_the_model(tmp_path):
    assert postprocess.read(tmp_path) is None
    postprocess.write(tmp_path, {"settings": {**postprocess.NONE, "tumor_min_ml": 0.2}}, workdir="run")
    assert postprocess.read(tmp_path)["tumor_min_ml"] == 0.2
    (tmp_path / postprocess.FILE).write_text('{"settings": {"largest": true}}')
    with pytest.raises(PareSegError, match="holds no postprocessing settings"):
        postprocess.read(tmp_path)


def _fake_run(tmp_path, validation):
    """A workdir as paresseg-train leaves it (config.json, split.json, last_model/) over a tiny cache."""
    import json

    from test_evaluate_crossval import _config, _save_model, _tiny_cache

    config = _config(_tiny_cache(tmp_path))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), default=list))
    split = {"train": ["case_0"], "validation": validation, "test": ["case_3"], "fold": 0, "num_folds": 2}
    (workdir / "split.json").write_text(json.dumps(split))
    _save_model(workdir / "last_model", ("pv", "art"))
    return workdir


def test_paresseg_postprocess_chooses_on_validation_cases(tmp_path):
    """The console script segments the run's validation cases (never its test case) and stores the choice
    beside last_model/."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from paresseg_jax import model_io
    from paresseg_jax.data import cache
    from paresseg_jax.infer.predict import predict_volume

    workdir = _fake_run(tmp_path, ["case_1", "case_2"])
    script = Path(sys.executable).with_name("paresseg-postprocess")
    done = subprocess.run([str(script), f"--workdir={workdir}", "--roi=oracle_gt_liver"], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600, env={**os.environ, "PARESSEG_HUGE_PAGES": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads((workdir / "last_model" / postprocess.FILE).read_text())
    assert stored["validation_cases"] == ["case_1", "case_2"] and stored["roi"] == "oracle_gt_liver"
    module, variables, _ = model_io.load_model(workdir / "last_model")
    dices = []
    for case_id in ("case_1", "case_2"):  # the mean Dice before postprocessing, computed here by another route
        case = cache.open_case(tmp_path / "cache" / case_id)
        mask = predict_volume(module, variables, {p: case.image(p) for p in ("pv", "art")}, case.roi,
                              batch_size=2) >= 0.5
        truth = np.asarray(case.tumor) > 0
        dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    assert stored["validation"]["mean_dice_before"]["tumor"] == pytest.approx(np.mean(dices))
    assert "liver" not in stored["validation"]["mean_dice_before"]  # the oracle's liver is the truth: not chosen


def test_a_run_without_validation_cases_is_refused(tmp_path):
    from paresseg_jax.evaluate import postprocess_choice

    with pytest.raises(PareSegError, match="no validation cases"):
        postprocess_choice.choose_for_run(_fake_run(tmp_path, []), roi="oracle_gt_liver")


SHAPE = (6, 40, 40)  # one test case: 1 x 1 x 5 mm voxels, 200 per ml


def _scored_runs(tmp_path):
    """A tumor run and its liver run (stand-in models, ``standin_models``) whose one test case's files are also
    what paresseg-predict reads. The liver model finds the liver and a stray bright blob outside it; the tumor
    model a 0.9 ml lesion and a 0.02 ml one beside it: ``liver_largest_component`` and ``tumor_min_ml`` change
    both masks."""
    import json

    from standin_models import save_standin

    from paresseg_jax import config_defaults
    from paresseg_jax.data.case import Case, write_case
    from paresseg_jax.data.layouts import write_manifest
    from paresseg_jax.data.preprocess import preprocess_cohort

    z, y, x = np.indices(SHAPE)
    liver = ((y - 20) ** 2 + (x - 20) ** 2 < 14**2).astype(np.uint8)
    stray = (z >= 1) & (z <= 4) & (y < 4) & (x < 4)  # as bright as liver, 36 px from it
    lesion = ((y - 20) ** 2 + (x - 20) ** 2 < 4**2) & (z >= 1) & (z <= 4)
    small = (z == 2) & (y >= 10) & (y < 12) & (x >= 28) & (x < 30)
    pv = np.where(liver | stray, 0.5, 0.0)
    art = pv + 0.4 * (lesion | small)
    hu = {name: (-70.0 + 250.0 * unit).astype(np.float32) for name, unit in (("pv", pv), ("art", art))}
    case = Case(hu, liver, lesion.astype(np.uint8), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                {"case_id": "case_t", "tumor_type": "HCC"})
    folder = write_case(case, tmp_path / "cohort" / "case_t")
    write_manifest(tmp_path / "cohort", [{"case_id": "case_t", "tumor_type": "HCC"}])
    config = config_defaults.get_config()
    config.data.preprocess.register = False
    config.data.cache_dir = str(preprocess_cohort(tmp_path / "cohort", tmp_path / "cache", config.data.preprocess,
                                                  progress=False, workers=1))
    config.eval.batch_size = 2
    split = {"train": ["case_a"], "validation": ["case_v"], "test": ["case_t"], "fold": 0, "num_folds": 2}
    for name, options in (("run", {}), ("liver", {"phases": ("pv",), "rule": "bright", "offset": 0.25})):
        (tmp_path / name).mkdir()
        for file, content in (("config.json", config.to_dict()), ("split.json", split),
                              ("status.json", {"state": "finished", "step": 2, "total_steps": 2})):
            (tmp_path / name / file).write_text(json.dumps(content, default=list))
        save_standin(tmp_path / name / "last_model", **options)
    return tmp_path / "run", tmp_path / "liver", folder


def test_scoring_applies_the_stored_postprocessing_as_predict_does(tmp_path):
    """paresseg-evaluate --run scores a test case as paresseg-predict segments its files, the stored choice
    included (cascade and oracle ROI); the summary records the choice, and one scored without it is stale."""
    import SimpleITK as sitk

    from paresseg_jax.evaluate import scoring
    from paresseg_jax.infer import study

    run, liver, folder = _scored_runs(tmp_path)
    phases = {p: folder / f"{p}.nii.gz" for p in ("pv", "art")}

    def scored(name, **roi):
        record = scoring.score_run(run, liver_workdir=liver, out_dir=tmp_path / name, reuse=True, **roi)["cases"][0]
        return record, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "predictions" / "case_t.nii.gz")))

    def predicted(name, **liver_source):
        report = study.predict_files(phases, run, tmp_path / f"{name}.nii.gz", gt=folder / "tumor.nii.gz",
                                     **liver_source)
        return report, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))

    plain, plain_mask = scored("plain")
    assert scoring.current_summary(run, liver_workdir=liver, out_dir=tmp_path / "plain")["info"]["provenance"][
        "postprocessing"] is None
    settings = {**postprocess.NONE, "liver_largest_component": True, "tumor_min_ml": 0.05}
    postprocess.write(run / "last_model", {"settings": settings})
    assert scoring.current_summary(run, liver_workdir=liver, out_dir=tmp_path / "plain") is None  # stale now
    chosen, chosen_mask = scored("plain")  # reuse=True scores it again
    report, predict_mask = predicted("predict", liver_model=liver)
    assert report["postprocessing"] == settings
    np.testing.assert_array_equal(chosen_mask, predict_mask)
    assert chosen["metrics"] == report["metrics"]
    assert plain_mask.sum() == chosen_mask.sum() + 4 > 4  # the small lesion went
    assert chosen["metrics"]["dice"] == 1.0 > plain["metrics"]["dice"]
    assert chosen["liver_dice"] == 1.0 > plain["liver_dice"]  # the stray blob went
    stored = scoring.current_summary(run, liver_workdir=liver, out_dir=tmp_path / "plain")["info"]["provenance"]
    assert stored["postprocessing"] == settings
    oracle, oracle_mask = scored("oracle", roi="oracle_gt_liver")
    report, predict_mask = predicted("given", liver=folder / "liver.nii.gz")
    np.testing.assert_array_equal(oracle_mask, predict_mask)
    assert oracle["metrics"] == report["metrics"] == chosen["metrics"]
    postprocess.write(run / "last_model", {"settings": {**settings, "tumor_min_ml": 0.1}})  # another choice
    assert scoring.current_summary(run, liver_workdir=liver, out_dir=tmp_path / "plain") is None
