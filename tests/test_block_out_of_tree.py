"""A fusion block in a package of the user's own, outside the repository, through every command.

The block (and, to keep compiles short, a one-scale model that puts it
between per-phase convolutions) lives in a temporary package that only
PYTHONPATH reaches. Each command runs as a fresh process: paresseg-train
names the block by import path in a flag, writes it into model.json, and
paresseg-predict, paresseg-evaluate (which rebuild the model from that
file) and paresseg-ablation (a row of the user's own, naming the user's
config file) import it again. The real models call the block the same way
(`fusion.fuse_scales`); tests/test_custom_block.py puts one into MSF-ResSeg.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from test_train_support import write_tiny_cache
from paresseg_jax.data import cache

BIN = Path(sys.executable).parent
BLOCK = "gateblocks.spatial:SpatialGate"
MODEL = "gateblocks.spatial:OneScaleFusionNet"

BLOCK_SOURCE = '''"""A spatial inter-phase gate: the one file a block author writes."""

import flax.linen as nn
import jax.numpy as jnp

from paresseg_jax.models import FusionBlock
from paresseg_jax.models.base import SegmentationModel
from paresseg_jax.models.fusion import fuse_scales
from paresseg_jax.models.layers import ConvBNReLU


class SpatialGate(FusionBlock):
    @nn.compact
    def __call__(self, pv, others, train):
        fused = [pv]
        for k, other in enumerate(others):
            gate = nn.sigmoid(nn.Conv(1, (3, 3), dtype=self.dtype, name=f"gate{k}")(jnp.concatenate([pv, other], -1)))
            fused.append(gate * other)
        return jnp.concatenate(fused, axis=-1)


class OneScaleFusionNet(SegmentationModel):
    @nn.compact
    def __call__(self, *inputs, train):
        features = [[ConvBNReLU(self.width, use_bias=False, name=f"{phase}_conv", **self.layer_options)(x, train)]
                    for phase, x in zip(self.phases, self.padded_inputs(inputs))]
        (fused,) = fuse_scales(self, features, train)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(fused)
        return self.cropped_logits(logits, inputs[0])
'''

# The user's experiment file for the ablation row: the model, and no ART-to-PV registration of the tiny
# phantom cases (30 s of the test's time otherwise).
CONFIG_SOURCE = f'''from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "{MODEL}"
    config.data.preprocess = {{"register": False}}
    config.data.preprocess_workers = 1
    return config
'''

ROWS_SOURCE = '''[[row]]
label = "spatial gate"
run = "gate"
config = "CONFIG"
overrides = {{ "model.fusion" = "{block}" }}
'''.format(block=BLOCK)


def _command(name: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_a_block_in_a_package_of_ones_own_survives_every_command(tmp_path):
    package = tmp_path / "site" / "gateblocks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "spatial.py").write_text(BLOCK_SOURCE)
    (package / "experiment.py").write_text(CONFIG_SOURCE)
    (tmp_path / "rows.toml").write_text(ROWS_SOURCE.replace("CONFIG", str(package / "experiment.py")))
    cache_dir = write_tiny_cache(tmp_path / "cache")
    case = cache.open_cohort(cache_dir)[0]
    for phase in ("pv", "art"):
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(case.image(phase))), str(tmp_path / f"{phase}.nii.gz"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu"}

    _ok(_command("paresseg-train", "--config=msf_resseg", "--workdir=work", f"--config.model.name={MODEL}",
                 f"--config.model.fusion={BLOCK}", "--config.model.width=4", f"--config.data.cache_dir={cache_dir}",
                 "--config.data.crop_size=32", "--config.data.worker_count=0", "--config.train.batch_size=4",
                 "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
                 "--config.eval.batch_size=4", cwd=tmp_path, env=env))
    spec = json.loads((tmp_path / "work" / "last_model" / "model.json").read_text())
    assert spec["name"] == MODEL and spec["fusion"] == BLOCK

    predict = ["--pv=pv.nii.gz", "--art=art.nii.gz", "--model=work", "--out=mask.nii.gz"]
    _ok(_command("paresseg-predict", *predict, cwd=tmp_path, env=env))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))).shape == case.image("pv").shape
    # Without the package on the import path the saved model cannot be rebuilt, and the error says why.
    without = _command("paresseg-predict", *predict, cwd=tmp_path, env={**env, "PYTHONPATH": ""})
    assert without.returncode == 2 and "cannot import 'gateblocks.spatial'" in without.stderr
    assert "Traceback" not in without.stderr

    # No liver-ResSeg was trained here: the ground-truth-liver oracle, asked for by name.
    tables = _ok(_command("paresseg-evaluate", "--run=gate=work", "--roi=oracle_gt_liver", cwd=tmp_path, env=env))
    assert "| gate " in tables and (tmp_path / "work" / "summary.json").is_file()

    report = _ok(_command("paresseg-ablation", "--workdir=ablation", "--rows=rows.toml", "--num_cases=5", "--size=64",
                          "--slices=8", "--width=4", "--steps=2", "--liver_steps=2", "--folds=0", cwd=tmp_path, env=env))
    assert "| spatial gate " in report
    saved = json.loads((tmp_path / "ablation" / "gate" / "seed_0" / "fold_0" / "last_model" / "model.json").read_text())
    assert saved["name"] == MODEL and saved["fusion"] == BLOCK
