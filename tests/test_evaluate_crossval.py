"""Cross-validation orchestration, scoring a predictions folder, and paresseg-evaluate's output."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax import config_defaults, model_io, models, runs
from paresseg_jax.data import cache
from paresseg_jax.data.case import Case, write_case
from paresseg_jax.data.images import write_image
from paresseg_jax.data.layouts import write_manifest
from paresseg_jax.errors import PareSegError
from paresseg_jax import summary
from paresseg_jax.evaluate import predictions, scoring
from paresseg_jax.experiments import crossval
from paresseg_jax.infer.cascade import segment_study
from paresseg_jax.infer.predict import predict_volume
from paresseg_jax.train import loop

SHAPE = (4, 32, 32)
TYPES = ("FNH", "FNH", "HCC", "HCC")
SPACING_XYZ = (0.8, 0.7, 5.0)


def _tiny_cache(root):
    rng = np.random.default_rng(0)
    cache_dir = Path(root) / "cache"
    for i, tumor_type in enumerate(TYPES):
        liver = np.zeros(SHAPE, np.uint8)
        liver[:, 6:26, 5:27] = 1
        tumor = np.zeros(SHAPE, np.uint8)
        tumor[1:3, 10 + i : 16 + i, 12:18] = 1
        images = {p: (rng.random(SHAPE) * liver).astype(np.float32) for p in ("pv", "art")}
        meta = {"tumor_type": tumor_type, "scanner": "s", "spacing": SPACING_XYZ, "origin": (1.0, 2.0, 3.0),
                "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
        cache.store_case(cache_dir, f"case_{i}", images, liver, tumor, liver, np.ones(SHAPE, np.float32), meta)
    return cache_dir


def _config(cache_dir):
    config = config_defaults.get_config()
    config.data.cache_dir = str(cache_dir)
    config.data.num_folds = 2
    config.data.fold = 0
    config.eval.threshold = 0.5
    config.eval.batch_size = 2
    return config


def _save_model(path, phases, seed=None):
    """A width-4 ResSeg (DMP for two phases) with fixed random weights, saved as paresseg-train exports it."""
    name = "resseg" if len(phases) == 1 else "dmp_resseg"
    module = models.create(name, width=4, phases=phases)
    variables = jax.tree.map(np.asarray, models.init_variables(module, jax.random.key(seed or len(phases))))
    model_io.save_model(path, {"name": name, "width": 4, "phases": list(phases)}, variables)


def _fake_training(cache_dir, trained, status=lambda: {"state": "finished", "step": 2, "total_steps": 2}):
    """Stands in for paresseg-train: what scoring reads is config.json, split.json, status.json and last_model/."""

    def train(config, workdir):
        trained.append((config.data.target, config.data.fold))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "config.json").write_text(json.dumps(config.to_dict(), default=list))
        split = runs.split_ids(config, [c.metadata for c in cache.open_cohort(cache_dir)])
        (Path(workdir) / "split.json").write_text(json.dumps({**split, "fold": config.data.fold, "num_folds": 2}))
        _save_model(Path(workdir) / "last_model", tuple(config.model.phases))
        state = status()
        (Path(workdir) / "status.json").write_text(json.dumps(state))
        return {"stopped_by": state.get("stopped_by")}

    return train


def test_cross_validate_trains_each_fold_and_its_liver_model_once_and_scores_every_test_case(tmp_path, monkeypatch):
    cache_dir = _tiny_cache(tmp_path)
    trained = []
    monkeypatch.setattr(loop, "train_and_evaluate", _fake_training(cache_dir, trained))
    content = crossval.cross_validate(_config(cache_dir), tmp_path / "cv", overlays=True)
    assert trained == [("liver", 0), ("tumor", 0), ("liver", 1), ("tumor", 1)]
    cases = {c["case_id"]: c for c in content["cases"]}
    assert sorted(cases) == [f"case_{i}" for i in range(4)]
    assert sorted(c["fold"] for c in cases.values()) == [0, 0, 1, 1]
    # Stratified by type: each fold holds one FNH and one HCC case.
    for fold in (0, 1):
        assert sorted(c["tumor_type"] for c in cases.values() if c["fold"] == fold) == ["FNH", "HCC"]
        split = json.loads((tmp_path / "cv" / f"fold_{fold}" / "split.json").read_text())
        assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
        assert sorted(split["test"]) == sorted(c for c, r in cases.items() if r["fold"] == fold)
    info = content["info"]
    assert (info["roi"], info["checkpoint"], info["extent"], info["threshold"]) == ("cascade", "last", "whole slices", ">= 0.5")
    # One case checked end to end against the cascade run directly: liver model -> dilated ROI -> tumor model.
    case, fold = cache.open_case(cache_dir / "case_2"), cases["case_2"]["fold"]
    tumor = model_io.load_model(tmp_path / "cv" / f"fold_{fold}" / "last_model")[:2]
    liver = model_io.load_model(tmp_path / "cv" / "liver" / f"fold_{fold}" / "last_model")[:2]
    result = segment_study({p: case.image(p) for p in ("pv", "art")}, tumor, liver_model=liver, threshold=0.5,
                           liver_threshold=0.5, batch_size=2)
    expected = summary.evaluate_case(result["mask"], case.tumor, SPACING_XYZ[::-1], "case_2", "HCC")
    assert cases["case_2"]["metrics"] == expected["metrics"]
    assert 0 <= cases["case_2"]["liver_dice"] <= 1
    written = sitk.ReadImage(str(tmp_path / "cv" / f"fold_{fold}" / "predictions" / "case_2.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), result["mask"])
    np.testing.assert_allclose(written.GetSpacing(), SPACING_XYZ)
    assert (tmp_path / "cv" / "fold_0" / "overlays").is_dir()
    assert content["summary"]["all"]["n_cases"] == 4
    # paresseg-evaluate --run on a fold's workdir gives that fold's records.
    again = scoring.score_run(tmp_path / "cv" / "fold_1", liver_workdir=tmp_path / "cv" / "liver" / "fold_1",
                              out_dir=tmp_path / "again")
    assert again["cases"] == [c for c in content["cases"] if c["fold"] == 1]
    # A liver model tested on other cases (trained on this run's test cases) is refused.
    with pytest.raises(PareSegError, match="not this run's"):
        scoring.score_run(tmp_path / "cv" / "fold_1", liver_workdir=tmp_path / "cv" / "liver" / "fold_0")
    # A second call resumes: no fold is trained again.
    crossval.cross_validate(_config(cache_dir), tmp_path / "cv")
    assert len(trained) == 4
    with pytest.raises(ValueError, match="num_folds"):
        crossval.cross_validate(_config(cache_dir), tmp_path / "cv", folds=[2])

    # The oracle, named as such: the cache's ground-truth liver ROI, no liver model trained.
    oracle = _config(cache_dir)
    oracle.eval.roi = "oracle_gt_liver"
    content = crossval.cross_validate(oracle, tmp_path / "oracle", folds=[fold])
    assert trained[4:] == [("tumor", fold)] and content["info"]["roi"] == "oracle_gt_liver"
    tumor = model_io.load_model(tmp_path / "oracle" / f"fold_{fold}" / "last_model")[:2]
    prob = predict_volume(*tumor, {p: case.image(p) for p in ("pv", "art")}, case.roi, batch_size=2)
    expected = summary.evaluate_case((prob >= 0.5).astype(np.uint8), case.tumor, SPACING_XYZ[::-1], "case_2", "HCC")
    assert {c["case_id"]: c for c in content["cases"]}["case_2"]["metrics"] == expected["metrics"]


def _write_cohort(root):
    records = []
    for i, tumor_type in enumerate(("Cyst", "METs", "Cyst")):
        tumor = np.zeros(SHAPE, np.uint8)
        tumor[1:3, 8:14, 8 + i : 14 + i] = 1
        pv = np.random.default_rng(i).normal(100, 20, SHAPE).astype(np.float32)
        case = Case({"pv": pv}, None, tumor, SPACING_XYZ, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                       {"case_id": f"c{i}", "tumor_type": tumor_type})
        write_case(case, root / "cohort" / f"c{i}")
        records.append({"case_id": f"c{i}", "tumor_type": tumor_type})
        shifted = np.roll(tumor, i, axis=2)  # prediction: the tumor moved by i voxels along x
        write_image(shifted, case, root / "preds" / f"c{i}.nii.gz")
    write_manifest(root / "cohort", records)


def test_evaluate_folder_and_launcher_tables(tmp_path):
    _write_cohort(tmp_path)
    content = predictions.evaluate_folder(tmp_path / "preds", tmp_path / "cohort")
    dice = {c["case_id"]: c["metrics"]["dice"] for c in content["cases"]}
    # 2 x 6 x 6 tumor moved by i columns: overlap 2 x 6 x (6 - i).
    assert dice == pytest.approx({"c0": 1.0, "c1": 5 / 6, "c2": 4 / 6})
    assert content["cases"][2]["metrics"]["hd95"] == pytest.approx(2 * 0.8)  # 2 voxels of 0.8 mm along x
    assert content["summary"]["per_type"]["Cyst"]["dpc"] == pytest.approx((1 + 4 / 6) / 2)
    assert (tmp_path / "preds" / "summary.json").is_file()

    command = [sys.executable, "-m", "paresseg_jax_launch.evaluate", f"--run=A={tmp_path / 'preds'}",
               f"--run=B={tmp_path / 'preds' / 'summary.json'}", f"--figures={tmp_path / 'figs'}"]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "Table 7 layout" in out and "Tables 8/11" in out and "Table 12" in out
    assert f"{100 * (1 + 5 / 6 + 4 / 6) / 3:.2f}" in out
    assert "paired t-test on dice (3 cases): B" in out
    assert (tmp_path / "figs" / "per_type_dpc.png").is_file()


def test_score_cases_liver_target_whole_slices_tumor_target_inside_the_cascade_or_oracle_roi(tmp_path):
    import flax.linen as nn
    import jax.numpy as jnp

    class BrightPV(nn.Module):
        """Foreground wherever the centre PV slice is above 0 (the tiny cache's images are 0 off the liver)."""

        phases: tuple = ("pv",)
        in_channels: int = 3

        @nn.compact
        def __call__(self, pv, train=False):
            score = 1e4 * pv[..., 1:2] - 1e-3
            return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)

    cases = cache.open_cohort(_tiny_cache(tmp_path))
    bright = (BrightPV(), {})
    liver = scoring.score_cases(bright, cases, {"batch_size": 2}, target="liver")
    assert [r["metrics"]["dice"] for r in liver] == [1.0] * 4
    oracle = scoring.score_cases(bright, cases, {"batch_size": 2}, roi="oracle_gt_liver")
    assert all(r["metrics"]["dice"] < 0.2 for r in oracle)  # the whole liver ROI is called tumor
    cascade = scoring.score_cases(bright, cases, {"batch_size": 2}, liver_model=bright)
    assert [r["liver_dice"] for r in cascade] == [1.0] * 4  # the liver model finds the liver exactly
    assert [r["metrics"] for r in cascade] == [r["metrics"] for r in oracle]  # so the ROI is the oracle's
    with pytest.raises(PareSegError, match="needs a liver model"):
        scoring.score_cases(bright, cases, {})
    with pytest.raises(ValueError, match="target"):
        scoring.score_cases(bright, cases, {}, target="spleen")


def test_a_stopped_training_is_never_scored_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    cache_dir = _tiny_cache(tmp_path)
    calls = []

    def status():  # the first tumor training is stopped by a signal at step 1 of 2
        stopped = [c[0] for c in calls] == ["liver", "tumor"]
        return {"state": "stopped" if stopped else "finished", "step": 1 if stopped else 2, "total_steps": 2,
                "stopped_by": "SIGINT" if stopped else None}

    monkeypatch.setattr(loop, "train_and_evaluate", _fake_training(cache_dir, calls, status))
    with pytest.raises(PareSegError, match="stopped by SIGINT at step 1 of 2, not finished"):
        crossval.cross_validate(_config(cache_dir), tmp_path / "cv", folds=[0])
    assert not (tmp_path / "cv" / "fold_0" / summary.SUMMARY_FILE).exists()
    content = crossval.cross_validate(_config(cache_dir), tmp_path / "cv", folds=[0])  # resumes, then scores
    assert [c[0] for c in calls] == ["liver", "tumor", "tumor"]  # the liver run had finished
    assert content["summary"]["all"]["n_cases"] == 2
    (tmp_path / "cv" / "fold_0" / "status.json").unlink()  # a run of unknown state (killed, or older code)
    with pytest.raises(PareSegError, match="not finished"):
        scoring.score_run(tmp_path / "cv" / "fold_0", liver_workdir=tmp_path / "cv" / "liver" / "fold_0")


def test_a_stored_summary_is_reused_only_when_its_provenance_matches(tmp_path, monkeypatch):
    cache_dir = _tiny_cache(tmp_path)
    monkeypatch.setattr(loop, "train_and_evaluate", _fake_training(cache_dir, []))
    crossval.cross_validate(_config(cache_dir), tmp_path / "cv", folds=[0])
    run, liver = tmp_path / "cv" / "fold_0", tmp_path / "cv" / "liver" / "fold_0"
    stored = summary.read_summary(run)["info"]["provenance"]
    assert stored["cases"] == json.loads((run / "split.json").read_text())["test"]
    assert stored["cache_key"] == cache_dir.name and stored["protocol"]["roi"] == "cascade"
    assert stored["config"]["train"]["loss"] == "ce" and len(stored["model_sha256"]) == 64
    scored = []
    real = scoring.score_cases
    monkeypatch.setattr(scoring, "score_cases", lambda *a, **k: scored.append(k["roi"]) or real(*a, **k))
    assert scoring.score_run(run, liver_workdir=liver, reuse=True)["info"]["provenance"] == stored
    assert scored == []  # all matched: reused
    # The check alone (the ablation's "is this row done"): what reuse would return, scoring nothing.
    assert scoring.current_summary(run, liver_workdir=liver)["info"]["provenance"] == stored
    assert scoring.current_summary(run, liver_workdir=liver, roi="oracle_gt_liver") is None and scored == []
    oracle = scoring.score_run(run, liver_workdir=liver, roi="oracle_gt_liver", reuse=True)
    assert scored == ["oracle_gt_liver"] and oracle["info"]["roi"] == "oracle_gt_liver"  # never relabelled
    _save_model(run / "last_model", ("pv", "art"))  # the same weights exported again: the same model
    scoring.score_run(run, liver_workdir=liver, roi="oracle_gt_liver", reuse=True)
    assert scored == ["oracle_gt_liver"]
    shutil.rmtree(liver / "last_model")
    _save_model(liver / "last_model", ("pv",), seed=5)  # another liver model: scored again
    again = scoring.score_run(run, liver_workdir=liver, reuse=True)
    assert scored == ["oracle_gt_liver", "cascade"]
    assert again["info"]["provenance"]["liver_model_sha256"] != stored["liver_model_sha256"]


def test_cross_validation_trains_the_liver_stage_of_configs_liver_resseg_whatever_the_tumor_loss(tmp_path, monkeypatch):
    from paresseg_jax import config_files

    seen = []

    def first_training(config, workdir):
        seen.append(config)
        raise KeyboardInterrupt  # the liver stage's config is all this test needs

    monkeypatch.setattr(loop, "train_and_evaluate", first_training)
    tumor = _config(tmp_path / "cache")
    tumor.train.loss, tumor.train.phase_dropout = "be", 0.3  # paresseg_be with phase dropout
    with pytest.raises(KeyboardInterrupt):
        crossval.cross_validate(tumor, tmp_path / "cv", folds=[0])
    liver, file = seen[0], config_files.load("liver_resseg")
    for key in ("model.name", "model.fusion", "model.phases", "data.target", "train.loss", "train.phase_dropout"):
        section, field = key.split(".")
        assert liver[section][field] == file[section][field], key
    assert (liver.train.loss, liver.data.target, tuple(liver.model.phases)) == ("ce", "liver", ("pv",))
    assert liver.data.cache_dir == tumor.data.cache_dir and liver.train.num_steps == tumor.train.num_steps
