"""The main job end to end at a minimal scale: cohort -> cache -> three trainings -> cascade -> report;
the ablation and paresseg-evaluate scoring the same runs."""

import json
import shutil

import numpy as np
import SimpleITK as sitk

from paresseg_jax.data import phantom_scale
from paresseg_jax.data.images import read_image
from paresseg_jax.experiments import ablation, demo
from paresseg_jax.evaluate import scoring

TINY = phantom_scale.DemoScale(
    num_cases=5, shape=(10, 64, 64), width=4, crop_size=32, batch_size=2,
    tumor_steps=2, liver_steps=2, num_folds=5, worker_count=0,
)


def test_demo_pipeline_writes_the_report_and_reuses_finished_stages(tmp_path):
    report = demo.run_demo(str(tmp_path), scale=TINY)
    text = report.read_text(encoding="utf-8")
    for run_name in demo.TUMOR_RUNS.values():
        assert run_name in text
    assert "DPC per tumor type" in text and "not clinical accuracy" in text and "## Lesion detection" in text
    assert "t-test of the per-case Dice not computed" in text  # one held-out case
    assert "| fold 0 of 5 (1) | last | cascade | whole slices | full | >= 0.6 |" in " ".join(text.split())  # stated
    for picture in ("training_curves.png", "per_type_dpc.png"):
        assert (tmp_path / picture).stat().st_size > 0

    held_out = None
    for run in demo.TUMOR_RUNS:
        summary = json.loads((tmp_path / "eval" / run / "summary.json").read_text())
        ids = [case["case_id"] for case in summary["cases"]]
        assert held_out is None or ids == held_out
        held_out = ids
        assert len(ids) == 1  # 5 cases, 5 folds: one held out
        for case in summary["cases"]:
            # Two training steps leave the tumor masks empty (their equalities below are checked on non-empty
            # masks with stand-in models in test_evaluate_crossval); the liver stage's masks are not, so the
            # comparisons below cover the cascade's liver model and ROI.
            assert case["metrics"]["tp"] + case["metrics"]["fn"] > 0 and 0.0 < case["liver_dice"] <= 1.0
            mask = sitk.ReadImage(str(tmp_path / "eval" / run / "predictions" / f"{case['case_id']}.nii.gz"))
            pv = read_image(tmp_path / "cohort" / case["case_id"] / "pv.nii.gz")
            assert mask.GetSize() == pv.GetSize()
            np.testing.assert_allclose(mask.GetSpacing(), pv.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(mask.GetOrigin(), pv.GetOrigin(), atol=1e-4)
            assert (tmp_path / "eval" / run / "overlays" / f"{case['case_id']}.png").is_file()

    # A rerun finds every stage done: the evaluation is not repeated.
    before = (tmp_path / "eval" / "paresseg" / "summary.json").stat().st_mtime_ns
    demo.run_demo(str(tmp_path), scale=TINY)
    assert (tmp_path / "eval" / "paresseg" / "summary.json").stat().st_mtime_ns == before

    # The same run scored by paresseg-evaluate's path gives the demo's records, and so does the ablation, which
    # trains it again in its own workdir (same scale, cohort seed, configs and training seed: deterministic),
    # here two trainings at a time in spawned processes.
    demo_summary = json.loads((tmp_path / "eval" / "resseg" / "summary.json").read_text())
    split = json.loads((tmp_path / "resseg" / "split.json").read_text())
    assert [c["case_id"] for c in demo_summary["cases"]] == split["test"]
    assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
    assert not split["validation"] and len(split["train"]) == 4  # every training-fold case trains (the paper)
    evaluated = scoring.score_run(tmp_path / "resseg", liver_workdir=tmp_path / "liver", out_dir=tmp_path / "evaluate")
    assert evaluated["cases"] == demo_summary["cases"]
    for folder in ("cohort", "cohort_cache"):  # the demo's cohort and its preprocessing, reused (not made again)
        shutil.copytree(tmp_path / folder, tmp_path / "ablation" / folder)
    table = ablation.run_ablation(str(tmp_path / "ablation"), TINY, runs=("resseg",), folds=[0], seeds=[0, 1], jobs=2)
    pooled = [json.loads((tmp_path / "ablation" / "resseg" / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    for log in ("liver_fold_0", "resseg_seed_0_fold_0", "resseg_seed_1_fold_0"):  # each process's output
        assert "train" in (tmp_path / "ablation" / ablation.LOG_DIR / f"{log}.log").read_text(encoding="utf-8")
    assert pooled[0]["cases"] == demo_summary["cases"]
    assert [c["case_id"] for c in pooled[1]["cases"]] == split["test"]  # the other seed: the same test case
    flat = " ".join(table.split())
    assert "| folds 0 of 5 | last | cascade | whole slices | full | >= 0.6 |" in flat
    dpc = [100 * p["summary"]["all"]["dpc"] for p in pooled]
    assert f"| single ResSeg (PV) | {np.mean(dpc):.1f} +- {np.std(dpc, ddof=1):.1f} |" in flat


def test_a_cohort_of_another_scale_is_refused_not_reused(tmp_path):
    import dataclasses

    import pytest

    from paresseg_jax.errors import PareSegError

    small = dataclasses.replace(TINY, num_cases=5, shape=(4, 16, 16))
    cohort = phantom_scale.make_cohort(tmp_path, small)
    assert phantom_scale.make_cohort(tmp_path, small) == cohort  # the same scale: reused
    for other in (dataclasses.replace(small, num_cases=6), dataclasses.replace(small, shape=(4, 32, 32))):
        with pytest.raises(PareSegError, match="not the"):
            phantom_scale.make_cohort(tmp_path, other)
