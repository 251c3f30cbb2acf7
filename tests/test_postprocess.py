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
