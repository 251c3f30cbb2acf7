"""paresseg_jax.experiments.ablation_plan / .ablation: a study is data (a TOML file of rows, pairs to compare, robustness conditions), and the
runner trains every row per seed and fold, scores each case once per seed and reports statistics over seeds."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from test_demo import TINY

from paresseg_jax import config_defaults, config_files
from paresseg_jax.experiments import ablation, ablation_plan
from paresseg_jax.errors import PareSegError
from paresseg_jax.workdir import PERTURBED_DIR, read_split


def test_built_in_rows_are_the_papers_and_name_existing_configs():
    study = ablation_plan.read_plan()
    rows = study.rows
    assert len(rows) == 8 and len({row.run for row in rows}) == 8
    assert {row.label for row in rows} <= set(ablation_plan.paper_rows())  # each prints beside the paper's numbers
    for row in rows:
        config_files.resolve(row.config)
    assert study.compare and all(set(pair) <= {row.run for row in rows} for pair in study.compare)
    beyond = ablation_plan.read_plan("beyond_the_paper")  # a built-in study by name
    names = ablation_plan.entry_names(beyond)
    assert "paresseg_phase_dropout:without_art" in names and "paresseg:shift_10mm" in names
    assert names["spatial:unregistered_none"] == "MSF + spatial inter-phase attention, registration: unregistered"


def test_a_row_file_of_ones_own(tmp_path):
    path = tmp_path / "rows.toml"
    path.write_text('[[row]]\nlabel = "mine"\nrun = "mine"\nconfig = "msf_resseg"\n'
                    'overrides = { "model.fusion" = "blocks:Gate", "model.phases" = ["pv", "art", "nc"] }\n')
    (row,) = ablation_plan.read_plan(path).rows
    config = config_files.load(row.config)
    ablation_plan.apply_overrides(config, row.overrides, row.label)
    assert config.model.fusion == "blocks:Gate" and config.model.phases == ("pv", "art", "nc")


@pytest.mark.parametrize("text, problem", [
    ('[[row]]\nlabel = "a"\nrun = "a"\n', "missing fields \\['config'\\]"),
    ('[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\nseed = 1\n', "unknown fields \\['seed'\\]"),
    ('[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n[[row]]\nlabel = "b"\nrun = "a"\nconfig = "unet"\n',
     "distinct run folders"),
    ('row = [', "cannot read"),
    ('compare = [["a", "b"]]\n[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n', "do not name two"),
    ('[robustness]\nkinds = ["twist"]\n[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n', "unknown kinds"),
    ('seeds = [1]\n[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n', "unknown top-level"),
    ('[[row]]\nlabel = "a"\nrun = "liver"\nconfig = "resseg"\n', "liver-ResSeg"),
    ('[robustness.registration]\nx = { registr = false }\n[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n',
     "registration\\] x: .*unknown preprocessing setting 'registr'"),
])
def test_bad_row_files_are_named(tmp_path, text, problem):
    path = tmp_path / "rows.toml"
    path.write_text(text)
    with pytest.raises(PareSegError, match=problem) as caught:
        ablation_plan.read_plan(path)
    assert caught.value.path == str(path)


@pytest.mark.parametrize("overrides", [{"model.fusoin": "pa"}, {"modle.fusion": "pa"}, {"model.width": "wide"}])
def test_an_override_that_does_not_fit_is_refused_not_ignored(overrides):
    with pytest.raises(PareSegError, match="row 'r'"):
        ablation_plan.apply_overrides(config_defaults.get_config(), overrides, "r")


STUDY = """
compare = [["pd", "pd:without_art"], ["pd:shift_3mm", "pd"]]
[robustness]
magnitudes_mm = [3]
kinds = ["shift"]
[robustness.registration]
rigid = { registration = { bspline_iterations = 0 } }
[[row]]
label = "PD"
run = "pd"
config = "paresseg"
overrides = { "train.phase_dropout" = 0.5 }
without = ["art"]
robustness = true
"""


@pytest.mark.slow  # ~3 min: 3 trainings and 8 scorings of tiny models (the runner's loop is in test_demo)
def test_a_study_trains_per_seed_scores_each_condition_and_reports_statistics(tmp_path, capsys):
    (tmp_path / "study.toml").write_text(STUDY)
    study = ablation_plan.read_plan(tmp_path / "study.toml")
    work = tmp_path / "work"
    scale = dataclasses.replace(TINY, num_cases=10)  # 2 test cases in fold 0: enough for the paired tests
    report = ablation.run_ablation(str(work), scale, study, seeds=[0, 1], folds=[0], jobs=2)  # 2 processes
    assert "1 rows x 2 seeds x 1 folds = 2 tumor trainings + 1 liver-ResSeg" in capsys.readouterr().out
    dpc = []
    for seed in (0, 1):
        fold_dir = work / "pd" / f"seed_{seed}" / "fold_0"
        test = read_split(fold_dir)["test"]
        assert json.loads((fold_dir / "config.json").read_text())["seed"] == seed
        for condition in ("without_art", "shift_3mm", "rigid_none"):
            scored = json.loads((fold_dir / PERTURBED_DIR / condition / "summary.json").read_text())
            assert sorted(c["case_id"] for c in scored["cases"]) == sorted(test)
        pooled = json.loads((work / "pd" / f"seed_{seed}" / "summary.json").read_text())
        assert [c["case_id"] for c in pooled["cases"]] == test and pooled["info"]["folds"] == [0]
        dpc.append(np.mean([c["metrics"]["dice"] for c in pooled["cases"]]))
        caches = {c: json.loads((fold_dir / PERTURBED_DIR / c / "summary.json").read_text())["info"]["cache_dir"]
                  for c in ("shift_3mm", "rigid_none")}  # the rigid-only test cases come from their own cache
        assert caches["rigid_none"] != caches["shift_3mm"] and Path(caches["rigid_none"]).parent == work / "cohort_cache"
    sd = f" +- {100 * np.std(dpc, ddof=1):.1f}"
    flat = " ".join(report.split())
    assert f"| PD | {100 * np.mean(dpc):.1f}{sd} |" in flat  # the mean and sd of the seeds' pooled DPC
    assert "| PD | PD, without ART | 2 |" in flat and "| PD, ART shift 3 mm | PD | 2 |" in flat
    assert "| PD, registration: rigid |" in flat and "| PD | shift | " in flat
    assert "## Lesion detection" in flat and "| all | PD | " in flat and "| > 20 mm | PD, without ART | " in flat
    for figure in ("dpc_per_entry.png", "dpc_per_type.png", "dpc_vs_misalignment.png"):
        assert (work / figure).stat().st_size > 0
    assert (work / "ablation.md").read_text(encoding="utf-8") == report
    # A rerun (in this process) trains and scores nothing again.
    before = (work / "pd" / "seed_1" / "fold_0" / PERTURBED_DIR / "shift_3mm" / "summary.json").stat().st_mtime_ns
    assert ablation.run_ablation(str(work), scale, study, seeds=[0, 1], folds=[0]) == report
    assert "[ablation] done" not in capsys.readouterr().out
    assert (work / "pd" / "seed_1" / "fold_0" / PERTURBED_DIR / "shift_3mm" / "summary.json").stat().st_mtime_ns == before
    # Scores of another protocol are not reused: the row is scored again, its conditions too (not retrained).
    fold_dir = work / "pd" / "seed_1" / "fold_0"
    stored = json.loads((fold_dir / "summary.json").read_text())
    stored["info"]["provenance"]["protocol"]["threshold"] = ">= 0.5"
    (fold_dir / "summary.json").write_text(json.dumps(stored))
    untouched = (work / "pd" / "seed_0" / "fold_0" / PERTURBED_DIR / "shift_3mm" / "summary.json").stat().st_mtime_ns
    assert ablation.run_ablation(str(work), scale, study, seeds=[0, 1], folds=[0]) == report
    assert "[ablation] 3/3 PD, seed 1, fold 0" in capsys.readouterr().out
    assert (fold_dir / PERTURBED_DIR / "shift_3mm" / "summary.json").stat().st_mtime_ns != before
    assert (work / "pd" / "seed_0" / "fold_0" / PERTURBED_DIR / "shift_3mm" / "summary.json").stat().st_mtime_ns == untouched
