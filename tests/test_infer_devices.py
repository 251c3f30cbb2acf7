"""Slices of a study sharded over several local devices (8 fake CPU devices in a subprocess) give the label map
one device gives."""

import numpy as np
from test_train_support import run_script

CODE = """
import sys, numpy as np, jax
from pathlib import Path
from test_infer_study import save_tiny_model
from paresseg_jax import model_io
from paresseg_jax.infer import predict
out = Path(sys.argv[-1]) if len(sys.argv) > 1 else None
model = save_tiny_model(Path({folder!r}) / "model_{devices}")
module, variables, _ = model_io.load_model(model)
rng = np.random.default_rng(0)
images = {{p: rng.uniform(0, 1, (6, 40, 48)).astype(np.float32) for p in ("pv", "art")}}
roi = np.zeros((6, 40, 48), np.uint8)
roi[1:5, 5:35, 4:40] = 1
probs = {{mode: predict.predict_volume(module, variables, images, roi, mode=mode, tile=32, stride=16, batch_size=3)
          for mode in ("full", "tile")}}
np.savez(Path({folder!r}) / "prob_{devices}.npz", **probs)
shards = predict._device_shardings()
print(jax.local_device_count(), predict.batch_length(3, 0, 1), 0 if shards is None else shards[0].num_devices)
"""


def test_eight_devices_give_the_label_maps_of_one(tmp_path):
    for devices in (1, 8):
        printed = run_script(CODE.format(folder=str(tmp_path), devices=devices), devices=devices).split()
        assert printed[-3:] == (["1", "3", "0"] if devices == 1 else ["8", "8", "8"])  # batch of 3 -> 8, sharded
    one, eight = np.load(tmp_path / "prob_1.npz"), np.load(tmp_path / "prob_8.npz")
    for mode in ("full", "tile"):
        assert (one[mode] >= 0.5).any() and (one[mode] < 0.5).any()
        np.testing.assert_array_equal(one[mode] >= 0.5, eight[mode] >= 0.5)
        np.testing.assert_allclose(one[mode], eight[mode], atol=1e-5)
