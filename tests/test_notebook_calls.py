"""The library called as a researcher first calls it: a block passed as a class, from a script without a main
guard, from standard input, and from a notebook-like `python -c` (no main file), with worker processes asked for.

Each way runs the same script in a fresh interpreter: a tiny phantom cohort preprocessed with 2 workers,
a 2-step training with 2 Grain workers and the block given as the class itself, then scoring. Spawned
workers would re-run an unguarded script (and cannot re-read stdin), so the work must run in-process there;
a notebook has no main file, so its workers start normally. The three runs share one compilation cache.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import pytest

from paresseg_jax import config_defaults, models
from paresseg_jax.errors import PareSegError
from paresseg_jax.models import registry

pytestmark = pytest.mark.xdist_group("notebook_calls")  # one worker, one way after another: the later ways load the first one's compilations

SCRIPT = '''
import os
import flax.linen as nn
import jax
from paresseg_jax import config_files, models
from paresseg_jax.data import phantom
from paresseg_jax.evaluate.scoring import score_run
from paresseg_jax.train import train_and_evaluate

jax.config.update("jax_compilation_cache_dir", os.environ["TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


class SumPhases(models.FusionBlock):
    """PV plus the other phases, through one conv-BN-ReLU."""

    @nn.compact
    def __call__(self, pv, others, train):
        return self.conv(pv.shape[-1], "mix")(pv + sum(others), train)


phantom.make_cohort("cohort", 4, shape=(8, 64, 64), progress=False)
config = config_files.load("smoke")
config.model.fusion = SumPhases
config.data.cohort_dir = "cohort"
config.data.preprocess = {"register": False}
config.data.preprocess_workers = 2
config.data.worker_count = 2
config.data.crop_size = 32
config.data.val_fraction = 0.0
config.data.num_folds = 4  # the phantom manifest's folds: one case each
config.train.num_steps = 2
train_and_evaluate(config, "work")
summary = score_run("work", roi="oracle_gt_liver")
print("scored", len(summary["cases"]), "cases")
'''

IN_PROCESS = "runs in this process"


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.mark.parametrize("way", ["script_without_guard", "stdin", "notebook"])
def test_training_and_scoring_work_however_the_library_is_called(tmp_path, xla_cache, way):
    (tmp_path / "experiment.py").write_text(SCRIPT)
    command = {"script_without_guard": [sys.executable, "experiment.py"], "stdin": [sys.executable, "-"],
               "notebook": [sys.executable, "-c", SCRIPT]}[way]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TEST_XLA_CACHE": str(xla_cache), "PARESSEG_HUGE_PAGES": "0"}
    done = subprocess.run(command, cwd=tmp_path, env=env, input=SCRIPT if way == "stdin" else None,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "scored 1 cases" in done.stdout
    assert "BrokenProcessPool" not in done.stderr and "bootstrapping" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if IN_PROCESS in line]
    if way == "notebook":
        assert warnings == []  # no main file: spawned workers do not re-run anything
    else:
        assert [w.split(IN_PROCESS)[0].rsplit(":", 1)[-1] for w in warnings] == ["preprocessing ", "data loading "]
        assert "experiment.py has no" in warnings[0] if way == "script_without_guard" else "<stdin>" in warnings[0]
    spec = json.loads((tmp_path / "work" / "last_model" / "model.json").read_text())
    assert spec["fusion"] == "__main__:SumPhases"
    assert "move the class into a module file" in done.stderr  # how to make it importable by other commands
    assert json.loads((tmp_path / "work" / "config.json").read_text())["model"]["fusion"] == "__main__:SumPhases"


class Halves(models.FusionBlock):
    @nn.compact
    def __call__(self, pv, others, train):
        return pv * 0.5


def test_create_and_the_config_take_the_block_class():
    module = models.create("msf_resseg", width=4, fusion=Halves)
    assert module.fusion is Halves
    config = config_defaults.get_config()
    config.model.fusion = Halves
    assert registry.recorded_spec(config.model.to_dict())["fusion"] == f"{__name__}:Halves"
    with pytest.raises(PareSegError, match="not a subclass"):
        models.create("msf_resseg", width=4, fusion=nn.Dense)


def test_a_block_from_main_cannot_be_rebuilt_elsewhere_and_the_error_says_what_to_do():
    with pytest.raises(PareSegError, match="move the class into a module file") as error:
        registry.fusion_block("__main__:NoSuchBlockHere")
    assert "'my_blocks:NoSuchBlockHere'" in str(error.value)
