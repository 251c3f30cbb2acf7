"""paresseg-export: the forward pass as a jax.export artifact, run by inference with no model code imported.

A width-4 PA-ResSeg with random weights, saved, exported by the command; the same phantom study segmented
with the saved model and with the artifact gives the same probabilities bit for bit (the weights travel as
arguments, so XLA compiles the saved model's computation), and the artifact's run never imports
`paresseg_jax.models`. Its bfloat16 forward pass follows the float32 one within bf16's precision.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import SimpleITK as sitk

from paresseg_jax import exported, model_io, models
from paresseg_jax.data import cache
from paresseg_jax.infer import study
from test_train_support import write_tiny_cache

pytestmark = pytest.mark.xdist_group("export")  # the module's saved and exported model is built once
CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PARESSEG_HUGE_PAGES": "0"}
RUN_EXPORTED = '''
import sys
from paresseg_jax.infer import study
study.predict_files({"pv": "pv.nii.gz", "art": "art.nii.gz"}, sys.argv[1], "exported.nii.gz",
                    prob_out="exported_prob.nii.gz")
loaded = sorted(m for m in sys.modules if m.startswith("paresseg_jax.models"))
assert not loaded, loaded
'''


@pytest.fixture(scope="module")
def saved_and_exported(tmp_path_factory):
    """A folder with the saved model ('saved') and what paresseg-export made of it ('model.jaxexport'), for both
    tests (a PA-ResSeg's initialisation and export take ~12 s)."""
    folder = tmp_path_factory.mktemp("export")
    module = models.create("paresseg", width=4)
    model_io.save_model(folder / "saved", {"name": "paresseg", "width": 4},
                        models.init_variables(module, jax.random.key(1)))
    done = subprocess.run([sys.executable, "-m", "paresseg_jax_launch.export", "--model=saved",
                           "--output=model.jaxexport"], cwd=folder, env=CPU_ENV, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_the_exported_model_segments_like_the_saved_one_without_model_code(tmp_path, saved_and_exported):
    case = cache.open_cohort(write_tiny_cache(tmp_path / "cache", num_cases=1))[0]
    for phase in ("pv", "art"):
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(case.image(phase))), str(tmp_path / f"{phase}.nii.gz"))
    folder = saved_and_exported / "model.jaxexport"
    assert json.loads((folder / "model.json").read_text())["phases"] == ["pv", "art"]
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Input phases (in this order): pv, art" in card and "not for diagnosis" in card

    done = subprocess.run([sys.executable, "-c", RUN_EXPORTED, str(folder)], cwd=tmp_path, env=CPU_ENV,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study.predict_files({"pv": tmp_path / "pv.nii.gz", "art": tmp_path / "art.nii.gz"}, saved_and_exported / "saved",
                        tmp_path / "saved.nii.gz", prob_out=tmp_path / "saved_prob.nii.gz")
    exported, saved = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
                       for name in ("exported", "saved"))
    assert exported.shape == np.asarray(case.image("pv")).shape
    np.testing.assert_array_equal(exported, saved)
    probability = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}_prob.nii.gz")))
                   for name in ("exported", "saved")}
    assert probability["saved"].std() > 0  # the network's output, not a constant
    np.testing.assert_array_equal(probability["exported"], probability["saved"])


def test_the_bfloat16_forward_pass_follows_the_float32_one(saved_and_exported):
    inputs = [np.random.default_rng(seed).random((2, 40, 72, 3), np.float32) for seed in (0, 1)]
    logits = {}
    for dtype in ("float32", "bfloat16"):
        model, variables, _ = exported.load_exported(saved_and_exported / "model.jaxexport", dtype)
        logits[dtype] = np.asarray(model.apply(variables, *inputs), np.float32)
    assert logits["float32"].shape == logits["bfloat16"].shape == (2, 40, 72, 2)
    scale = np.abs(logits["float32"]).max()
    assert 0 < np.abs(logits["bfloat16"] - logits["float32"]).max() < 0.05 * scale
