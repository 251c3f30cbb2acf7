"""paresseg_jax.config_files: configs named by built-in name or by path, on the command line too."""

import subprocess
import sys
from pathlib import Path

import pytest

from paresseg_jax import config_files
from paresseg_jax.errors import PareSegError

REPO = Path(__file__).resolve().parents[1]


def test_builtin_name_loads_the_repository_file():
    assert config_files.resolve("smoke") == str(REPO / "configs" / "smoke.py")
    assert config_files.load("smoke").to_dict() == config_files.load(str(REPO / "configs" / "smoke.py")).to_dict()
    assert "paresseg" in config_files.builtin_names() and "__init__" not in config_files.builtin_names()


def test_a_file_of_ones_own_with_an_argument(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import ml_collections\n\ndef get_config(size='1'):\n"
                    "    return ml_collections.ConfigDict({'size': int(size)})\n")
    assert config_files.load(str(path)).size == 1
    assert config_files.load(f"{path}:7").size == 7


def test_unknown_name_and_missing_file_say_what_exists(tmp_path):
    with pytest.raises(PareSegError, match="unknown config 'paresseg2'.*paresseg, paresseg_be"):
        config_files.load("paresseg2")
    with pytest.raises(PareSegError, match="no such config file"):
        config_files.load(str(tmp_path / "absent.py"))


def test_config_flag_takes_a_name_and_overrides():
    script = ("import sys; from absl import flags; from paresseg_jax import cli; config = cli.define_config_flag('help'); "
              "flags.FLAGS(sys.argv); print(config.value.model.width, config.value.train.num_steps)")
    result = subprocess.run([sys.executable, "-c", script, "--config=smoke", "--config.train.num_steps=7"],
                            capture_output=True, encoding="utf-8", errors="replace", cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "7"]
