"""paresseg-train as a user runs it: --help, a config file, --config.x.y overrides, resume."""

import json
import os
import subprocess
import sys

import pytest

from test_train_support import REPO, run_script, write_tiny_cache
from paresseg_jax.workdir import read_metrics

LAUNCH = f"import runpy, sys; sys.argv = ['paresseg-train'] + ARGS; runpy.run_path({str(REPO / 'launch' / 'train.py')!r}, run_name='__main__')"


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--help"],
        capture_output=True, encoding="utf-8", errors="replace", env={"PYTHONPATH": str(REPO), "PATH": ""}, cwd=REPO, timeout=120,
    ).stdout
    own = out.split("launch/train.py:")[1].split("Try --helpfull")[0]
    for flag in ("config", "workdir", "coordinator_address", "num_processes", "process_id"):
        assert f"--{flag}:" in own
    # Every flag has a sentence of help, not just its name.
    entries = [e for e in own.split("\n  --") if e.strip()]
    assert all(len(e.split(":", 1)[1].split()) >= 5 for e in entries), own
    assert "--config.<section>.<field>=value" in out


def test_config_file_overrides_and_resume(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    config_file = tmp_path / "tiny_experiment.py"
    config_file.write_text(
        "from pathlib import Path\nfrom test_train_support import tiny_config\n\n"
        f"def get_config():\n    return tiny_config(Path({str(cache)!r}))\n"
    )
    workdir = tmp_path / "work"
    args = [f"--config={config_file}", f"--workdir={workdir}", "--config.train.num_steps=4", "--config.train.eval_every=2"]
    out = run_script(LAUNCH.replace("ARGS", repr(args)))
    assert "finished: best validation global Dice" in out
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == 4 and saved["train"]["eval_every"] == 2
    run_script(LAUNCH.replace("ARGS", repr(args[:2] + ["--config.train.num_steps=6", "--config.train.eval_every=2"])))
    steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the second run resumed at step 4


@pytest.mark.parametrize("override, message", [
    ("--config.train.num_stepz=3", "config.train has no field 'num_stepz'; did you mean config.train.num_steps?"),
    ("--config.trian.num_steps=3", "config has no field 'trian'; did you mean config.train?"),
])
def test_typo_in_override_is_one_line_before_any_work(tmp_path, override, message):
    workdir = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH.replace("ARGS", repr(["--config=configs/smoke.py", f"--workdir={workdir}", override]))],
        capture_output=True, encoding="utf-8", errors="replace", cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not workdir.exists()


@pytest.mark.timeout(3600)
@pytest.mark.slow  # the real PA-ResSeg (width 4) compiles for minutes on 2 CPU cores
def test_smoke_config_trains_the_real_model_on_a_phantom_cohort(tmp_path):
    cohort = tmp_path / "cohort"
    run_script(
        "import runpy, sys; sys.argv = ['paresseg-make-phantom', "
        f"'--out={cohort}', '--num_cases=5', '--size=64', '--slices=12']; "
        f"runpy.run_path({str(REPO / 'launch' / 'make_phantom.py')!r}, run_name='__main__')"
    )
    workdir = tmp_path / "work"
    args = ["--config=configs/smoke.py", f"--workdir={workdir}", f"--config.data.cohort_dir={cohort}",
            "--config.train.num_steps=8"]
    run_script(LAUNCH.replace("ARGS", repr(args)), timeout=3000)
    train = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])
    assert (workdir / "checkpoints" / "8").is_dir() and (workdir / "best_model" / "model.json").exists()
