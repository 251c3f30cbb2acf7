"""A non-editable install (``pip install --target``): only the project's own top-level names, and it runs.

The repository's ``configs/`` and ``launch/`` are installed as ``paresseg_jax_configs`` and
``paresseg_jax_launch``; the generic names would clash with other projects' in site-packages.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"paresseg_jax": "paresseg_jax", "configs": "paresseg_jax_configs", "launch": "paresseg_jax_launch"}

pytestmark = pytest.mark.xdist_group("install")  # one installed copy for the module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A copy of the sources (the build writes build/ beside them) installed into a folder of its own."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in INSTALLED_AS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # The environment's setuptools builds the wheel (>= 70.1 needs no `wheel` package): no download.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    return target


def _python_files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def test_data_files_are_installed(site):
    assert (site / "paresseg_jax" / "evaluate" / "paper_tables.json").is_file()
    assert {p.name for p in (REPO / "configs").glob("*.toml")} == {p.name for p in (site / "paresseg_jax_configs").glob("*.toml")}


def test_only_the_projects_own_names_are_top_level(site):
    top_level = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"bin", *INSTALLED_AS.values()}


def test_every_source_file_is_installed(site):
    for folder, name in INSTALLED_AS.items():
        assert _python_files(site / name) == _python_files(REPO / folder), folder


def test_console_script_and_built_in_configs_run_from_the_install(site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(site), "PARESSEG_HUGE_PAGES": "0", "PARESSEG_XLA_CACHE": "0"}
    result = subprocess.run([str(site / "bin" / "paresseg-train"), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.stdout.startswith("paresseg-train: train one experiment"), result.stderr
    assert "--workdir:" in result.stdout
    where = ("import paresseg_jax_launch.train, paresseg_jax.config_files as c; "
             "print(paresseg_jax_launch.train.__file__); print(c.resolve('smoke')); print(c.load('smoke').model.width)")
    result = subprocess.run([sys.executable, "-c", where], cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=120)
    launcher, smoke, width = result.stdout.split()
    assert Path(launcher).is_relative_to(site) and Path(smoke) == site / "paresseg_jax_configs" / "smoke.py", result.stderr
    assert width == "4"


def test_no_source_file_or_help_text_points_outside_the_repository():
    """Help texts, docstrings and comments name files that a clone or an install holds."""
    outside = re.compile("|".join([r"\.\./" + "shared", "shared" + "/reference", "(REFERENCE|PHANTOM|DESIGN|STYLE)" + r"\.md"]))
    files = [p for folder in ("paresseg_jax", "configs", "launch", "tests") for p in (REPO / folder).rglob("*")
             if p.suffix in (".py", ".sh", ".toml", ".json") and "__pycache__" not in p.parts]
    files += [REPO / "setup.cfg", REPO / "pyproject.toml"]
    pointing = [f"{p.relative_to(REPO)}:{n}" for p in files for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                if outside.search(line)]
    assert not pointing
