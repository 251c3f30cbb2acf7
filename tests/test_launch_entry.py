"""paresseg_jax.cli (how launchers start): a console script's `--help` shows its launcher's usage text and flags; a missing input is one line."""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Installed launcher module -> some flags it defines. `python -c "...run()"` stands in for the generated console
# script: its __main__ has no docstring and is not the launcher's module, as with `paresseg-train`.
LAUNCHERS = {
    "paresseg_jax_launch.train": ("config", "workdir", "coordinator_address"),
    "paresseg_jax_launch.predict": ("pv", "art", "model", "out", "crop_to_roi"),
    "paresseg_jax_launch.evaluate": ("run", "predictions", "folds", "liver_workdir", "roi"),
    "paresseg_jax_launch.demo": ("workdir", "full", "seed"),
    "paresseg_jax_launch.ablation": ("workdir", "rows", "runs", "steps"),
    "paresseg_jax_launch.convert": ("input", "output", "arch"),
    "paresseg_jax_launch.make_phantom": ("out", "num_cases"),
    "paresseg_jax_launch.import_dicom": ("input", "output", "phase_keyword", "segment_label"),
    "paresseg_jax_launch.benchmark": ("parts", "batch", "compare_torch"),
    "paresseg_jax_launch.robustness": ("workdir", "liver_workdir", "roi", "magnitudes", "kinds", "absent", "seed"),
    "paresseg_jax_launch.postprocess": ("workdir", "liver_workdir", "roi"),
}


def _first_doc_line(module: str) -> str:
    """Read from the source: importing a launcher here would define its flags in this process."""
    path = Path(importlib.util.find_spec(module).origin)
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))).splitlines()[0]


def _run(source: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PARESSEG_HUGE_PAGES": "0"}
    return subprocess.run([sys.executable, "-c", source, *args], cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=120)


def _help(source: str) -> str:
    result = _run(source, "--help")
    assert "Try --helpfull" in result.stdout, result.stderr  # absl's help, which exits with status 1
    return result.stdout


@pytest.mark.parametrize("module", sorted(LAUNCHERS))
def test_console_script_help_shows_usage_and_flags(module):
    out = _help(f"from {module} import run; run()")
    assert out.startswith(_first_doc_line(module))
    for name in LAUNCHERS[module]:
        assert f"--{name}:" in out or f"--[no]{name}:" in out, (name, out)
    assert "--xla_" not in out and "--jax_" not in out  # only the launcher's own flags, not every library's


def test_benchmark_subcommand_help_is_the_subcommand_module():
    out = _help("import sys; sys.argv[1:1] = ['pipeline']; from paresseg_jax_launch.benchmark import run; run()")
    assert out.startswith(_first_doc_line("paresseg_jax.benchmarks.pipeline"))
    assert "--workers:" in out and "--parts:" not in out


def test_missing_input_ends_with_one_line_not_a_traceback(tmp_path):
    result = _run("from paresseg_jax_launch.predict import run; run()", f"--pv={tmp_path}/pv.nii.gz", f"--model={tmp_path}",
                  f"--out={tmp_path}/mask.nii.gz")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"-c: error: {tmp_path}/pv.nii.gz: the PV image (--pv) does not "
                                                  "exist; check the path"]


def test_a_bug_keeps_its_traceback(tmp_path):
    result = _run("from paresseg_jax import cli\ndef main(argv): raise KeyError('a bug')\ncli.run_app(main)")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'a bug'" in result.stderr


def test_no_benchmark_module_defines_flags_when_imported():
    """paresseg-bench's subcommands define their flags in ``define_flags()`` when they run: imported together
    (one test worker, a notebook) none clashes with another's ``--json`` or ``--run``."""
    defining = []
    for path in sorted((REPO / "paresseg_jax" / "benchmarks").glob("*.py")):
        for statement in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(statement, ast.If):  # `if __name__ == "__main__":` runs only as a script
                continue
            calls = [node for node in ast.walk(statement) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("DEFINE")]
            if calls and not isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
                defining.append(f"{path.name}:{statement.lineno}")
    assert not defining
