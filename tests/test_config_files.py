"""paresseg_jax.config_files: configs named by built-in name or by path, on the command line too."""

import re
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


MINE = """from paresseg_jax import config_defaults


def get_config(width="4"):
    config = config_defaults.get_config()
    config.model.width = int(width)
    {line}
    return config
"""


def test_a_file_of_ones_own_with_an_argument(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(MINE.format(line="config.data.preprocess = {'register': False}  # a section given in part"))
    assert config_files.load(str(path)).model.width == 4
    assert config_files.load(f"{path}:7").model.width == 7


def test_every_built_in_config_declares_only_known_fields():
    for name in config_files.builtin_names():
        config_files.check_fields(config_files.load(name), name)


@pytest.mark.parametrize("line, says", [
    ("config.train.num_stpes = 5", r"config\.train\.num_stpes is not a config field; did you mean config\.train\.num_steps\?"),
    ("config.data.preprocess = {'registr': False}", r"config\.data\.preprocess\.registr is not a config field"),
    ("config.optimizer = 'sgd'", r"config\.optimizer is not a config field; config has: data, eval, model, seed, train"),
    ("config.train.num_steps = '5'", r"wrong type \(Could not override field 'num_steps'"),
])
def test_a_config_file_is_checked_whole_naming_the_file_and_the_field(tmp_path, line, says):
    """A typo would otherwise be a new field nothing reads (the run going on with the default); a value of
    another type a traceback from inside ml_collections."""
    path = tmp_path / "mine.py"
    path.write_text(MINE.format(line=line))
    with pytest.raises(PareSegError, match=says) as error:
        config_files.load(str(path))
    assert error.value.path == str(path)
    # Through a launcher's --config flag: absl's flag error (exit 1, as for a --config.a.b typo), before any work.
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.train", f"--config={path}",
                           f"--workdir={tmp_path / 'work'}"], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[0]
    assert error.startswith(f"FATAL Flags parsing error: flag --config={path}: {path}: ") and re.search(says, error)
    assert not (tmp_path / "work").exists()


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
