"""A trained run scored with ART misaligned by known millimetres and without ART."""

import numpy as np
import pytest

from paresseg_jax import config_files, models
from paresseg_jax.data import cache
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate import robustness, scoring
from paresseg_jax.summary import read_summary
from paresseg_jax.experiments import ablation_plan
from paresseg_jax.infer.ensemble import as_ensemble
from paresseg_jax.train import loop
from paresseg_jax.workdir import PERTURBED_DIR, read_split
from standin_models import command, standin_runs
from test_train_support import tiny_config, write_tiny_cache

pytestmark = pytest.mark.xdist_group("robustness")  # the module's runs are built once


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


def _train(cache_dir, workdir, phase_dropout):
    config = tiny_config(cache_dir, num_steps=2, eval_every=2, checkpoint_every=2, phase_dropout=phase_dropout)
    loop.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def contrast_run(cache_dir, tmp_path_factory):
    return standin_runs(cache_dir, tmp_path_factory.mktemp("contrast"), phase_dropout=0.5)


def test_misaligned_or_absent_art_lowers_the_dice_of_a_model_that_reads_art(contrast_run):
    """With the shift or deformation ignored, or ART kept in for 'without_art', this test fails."""
    run, liver = contrast_run
    dpc = robustness.evaluate_perturbed(run, magnitudes_mm=(0, 4), absent=["art"], liver_workdir=liver)
    assert dpc["none"] > 0.9  # the stand-in finds the tumors where ART is where PV is
    assert dpc["shift_4mm"] < dpc["none"] - 0.1 and dpc["deformation_4mm"] < dpc["none"] - 0.05
    assert dpc["shift_4mm"] != dpc["deformation_4mm"]
    without = read_summary(run / PERTURBED_DIR / "without_art")["cases"]
    assert dpc["without_art"] == 0.0 and all(r["metrics"]["dice"] == 0.0 for r in without)  # no ART, no contrast
    assert all(r["liver_dice"] > 0.9 for r in read_summary(run / PERTURBED_DIR / "none")["cases"])  # cascade ROI
    other_seed = robustness.evaluate_perturbed(run, magnitudes_mm=(4,), kinds=("shift",), seed=1, liver_workdir=liver)
    assert other_seed["shift_4mm"] != dpc["shift_4mm"]  # the seed draws the directions


def test_robustness_command(contrast_run, cache_dir):
    """paresseg-robustness as README shows it (its --help: test_launch_entry): every flag reaches
    evaluate_perturbed, the printed DPCs are the summaries'."""
    run, liver = contrast_run
    done = command("paresseg-robustness", f"--workdir={run}", f"--liver_workdir={liver}", "--magnitudes=0,3",
                   "--kinds=shift", "--seed=2", "--absent=art", f"--cache_dir={cache_dir}", "--prefix=cli_")
    names = ["cli_none", "cli_shift_3mm", "cli_without_art"]
    assert sorted(p.name for p in (run / PERTURBED_DIR).glob("cli_*")) == sorted(names)
    for name in names:
        summary = read_summary(run / PERTURBED_DIR / name)
        assert summary["info"]["seed"] == 2 and summary["info"]["roi"] == "cascade"
        dpc = 100 * np.mean([r["metrics"]["dice"] for r in summary["cases"]])
        assert f"{name:>20}  DPC {dpc:6.2f}%" in done.stdout
    command("paresseg-robustness", f"--workdir={run}", "--roi=oracle_gt_liver", "--magnitudes=0", "--kinds=shift",
            "--prefix=oracle_")
    assert read_summary(run / PERTURBED_DIR / "oracle_none")["info"]["roi"] == "oracle_gt_liver"


def test_a_shifted_view_moves_its_phase_rigidly_by_the_magnitude_in_one_direction_per_case(tmp_path):
    """Three caches hold case 'c' with ART a ramp along z, y and x: each reads back one component of its shift."""
    shape, spacing_zyx = (8, 40, 44), (5.0, 0.8, 0.7)
    liver = np.ones(shape, np.uint8)
    moved_mm = []
    for axis, ramp in enumerate(np.indices(shape).astype(np.float32)):
        case = cache.store_case(tmp_path / str(axis), "c", {"pv": ramp * 0 + 0.5, "art": ramp}, liver, liver * 0,
                                liver, liver.astype(np.float32), {"spacing": list(reversed(spacing_zyx))})
        view = robustness.misaligned(case, "shift", 5.0, seed=1)
        np.testing.assert_array_equal(view.image("pv"), case.image("pv"))
        np.testing.assert_array_equal(view.tumor, case.tumor)
        difference = (view.image("art") - ramp)[2:-2, 10:-10, 10:-10]  # away from the clamped edges
        assert np.ptp(difference) < 1e-4  # rigid
        moved_mm.append(float(difference.mean()) * spacing_zyx[axis])
    assert np.linalg.norm(moved_mm) == pytest.approx(5.0, rel=1e-4)
    other_seed = robustness.misaligned(case, "shift", 5.0, seed=2).image("art")
    assert not np.allclose(other_seed, view.image("art"))
    deformed = robustness.misaligned(case, "deformation", 3.0, seed=1).image("art") - ramp
    assert np.ptp(deformed) > 0.1 and np.abs(deformed).max() * spacing_zyx[2] <= 3.0 + 1e-4
    assert not robustness.without(case, ["art"]).image("art").any()
    with pytest.raises(ValueError, match="unknown"):
        robustness.misaligned(case, "twist", 1.0)


def test_every_condition_gets_its_summary_and_only_a_phase_dropout_model_goes_without_art(cache_dir, tmp_path):
    dropout = _train(cache_dir, tmp_path / "dropout", 0.5)
    with pytest.raises(PareSegError, match="cascade ROI needs the liver-ResSeg"):
        robustness.evaluate_perturbed(dropout, magnitudes_mm=(0,), kinds=())
    dpc = robustness.evaluate_perturbed(dropout, magnitudes_mm=(0, 4), kinds=("shift", "deformation"), absent=["art"],
                                        roi="oracle_gt_liver")
    assert list(dpc) == ["none", "shift_4mm", "deformation_4mm", "without_art"]
    for name in dpc:
        summary = read_summary(dropout / PERTURBED_DIR / name)
        assert {r["condition"] for r in summary["cases"]} == {name}
        assert {r["fold"] for r in summary["cases"]} == {read_split(dropout)["fold"]}  # pooled per fold by studies
        assert summary["info"]["roi"] == "oracle_gt_liver"
        assert sorted(r["case_id"] for r in summary["cases"]) == sorted(read_split(dropout)["test"])
        assert dpc[name] == pytest.approx(np.mean([r["metrics"]["dice"] for r in summary["cases"]]))
    assert read_summary(dropout / PERTURBED_DIR / "shift_4mm")["cases"][0]["misalignment_mm"] == 4.0
    # the held-out cases as another preprocessing left them (here: other images under the same case ids)
    other = write_tiny_cache(tmp_path / "other", seed=7)
    robustness.evaluate_perturbed(dropout, magnitudes_mm=(0,), kinds=(), cache_dir=other, prefix="other_",
                                  roi="oracle_gt_liver")
    elsewhere, here = (read_summary(dropout / PERTURBED_DIR / name) for name in ("other_none", "none"))
    assert elsewhere["info"]["cache_dir"] == str(other)
    assert [r["case_id"] for r in elsewhere["cases"]] == [r["case_id"] for r in here["cases"]]
    plain = _train(cache_dir, tmp_path / "plain", 0.0)
    with pytest.raises(PareSegError, match="trained without phase dropout"):
        robustness.evaluate_perturbed(plain, magnitudes_mm=(), absent=["art"], roi="oracle_gt_liver")


def test_conditions_that_keep_pv_reuse_the_liver_stage_with_the_same_records(cache_dir):
    """evaluate_perturbed scores every condition with one dict of liver masks: the liver model runs once per
    case, and a record is the same as when it runs each time."""
    import jax

    cases = cache.open_cohort(cache_dir)[:2]
    tumor, liver = (models.create("resseg", width=4, phases=phases) for phases in (("pv", "art"), ("pv",)))
    tumor_model = (tumor, models.init_variables(tumor, jax.random.PRNGKey(0)))
    liver_model = (liver, models.init_variables(liver, jax.random.PRNGKey(1)))
    liver_prob = as_ensemble(liver_model).probability({"pv": np.asarray(cases[0].image("pv"))})
    eval_config = {"threshold": 0.5, "liver_threshold": float(np.median(liver_prob))}  # an untrained model's half
    each_time = scoring.score_cases(tumor_model, cases, eval_config, liver_model=liver_model)
    masks = {}
    first = scoring.score_cases(tumor_model, cases, eval_config, liver_model=liver_model, liver_masks=masks)
    assert sorted(masks) == [c.case_id for c in cases] and first == each_time
    assert 0 < masks[cases[0].case_id].mean() < 1  # a liver ROI that is neither empty nor everything
    not_a_model = ("the liver model", "must not run again")
    again = scoring.score_cases(tumor_model, cases, eval_config, liver_model=not_a_model, liver_masks=masks)
    assert again == each_time


def test_the_study_rows_build_their_configs():
    study = ablation_plan.read_plan("beyond_the_paper")
    rows = study.rows
    configs = {}
    for row in rows:
        configs[row.run] = config_files.load(row.config)
        ablation_plan.apply_overrides(configs[row.run], row.overrides, row.label)
    assert configs["spatial"].model.fusion == "spatial"
    assert configs["paresseg_phase_dropout"].train.phase_dropout == 0.3
    assert dict(configs["paresseg_misregistration"].data.misregistration) == {"shift_mm": 5.0, "deformation_mm": 3.0}
    robust = {row.run for row in rows if row.robustness}
    assert robust == {"paresseg", "spatial", "paresseg_misregistration"}
    assert [row.without for row in rows if row.without] == [("art",)]
    assert set(study.registration) == {"unregistered", "rigid"} and max(study.magnitudes_mm) == 10
