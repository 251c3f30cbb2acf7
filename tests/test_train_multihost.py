"""Multi-process training on localhost: 2 processes x 2 CPU devices (gloo) == 1 process x 4 devices.

Each process feeds its half of the same global batches
(``jax.make_array_from_process_local_data``), so both layouts must reach the
same parameters (float64, like the single-host equivalence test). Then the
two processes run the real loop for a few steps (Grain process shards, orbax
multi-process checkpoint, validation gathered across processes).
"""

import json
import socket

import numpy as np
import pytest

from test_train_support import run_script

STEPS = r"""
import json, sys, jax, numpy as np, jax.numpy as jnp
from paresseg_jax.train import distributed
pid, port, nproc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if nproc > 1:
    distributed.initialize(f"localhost:{port}", nproc, pid)
jax.config.update("jax_enable_x64", True)
from test_train_support import TinySeg, random_batch
from paresseg_jax import losses, models
from paresseg_jax.train import parallel as P, state as S, step as T
assert jax.device_count() == 4 and jax.process_count() == nproc
out = {}
for mode in ("jit", "pmap"):
    par = P.DataParallel(mode)
    module = TinySeg(width=4, dtype=jnp.float64, bn_axis_name=par.bn_axis_name)
    variables = jax.tree.map(lambda x: np.asarray(x, np.float64), models.init_variables(module, jax.random.PRNGKey(0), 16, 16))
    tx = S.make_optimizer({"learning_rate": 1e-2}, 3)
    step = par.wrap_train_step(T.make_train_step(module, tx, losses.get_loss("be"), S.learning_rate_schedule({}, 3), par.bn_axis_name))
    state = par.put_state(S.create_train_state(variables, tx, 0))
    rng = np.random.default_rng(1)
    rows = slice(pid * 4 // nproc, (pid + 1) * 4 // nproc)
    for _ in range(3):
        batch = {k: v[rows] for k, v in random_batch(rng, 4, 16, np.float64).items()}
        state, metrics = step(state, par.put_batch(batch))
    host = par.host_state(state)
    out[mode] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves((host.params, host.batch_stats))]
    out[mode + "_loss"] = par.host_metrics(metrics)["loss"]
print("RESULT" + json.dumps(out))
"""

LOOP = r"""
import json, sys, jax
from pathlib import Path
from paresseg_jax.train import distributed
pid, port = int(sys.argv[1]), int(sys.argv[2])
distributed.initialize(f"localhost:{port}", 2, pid)
from test_train_support import tiny_config
from paresseg_jax.train import train_and_evaluate
config = tiny_config(Path(sys.argv[3]), num_steps=4, eval_every=4, checkpoint_every=2, parallel="jit")
print("RESULT" + json.dumps(train_and_evaluate(config, sys.argv[4])))
"""


def _held_port() -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT, held while the children run: the coordinator's gRPC
    server (which sets SO_REUSEPORT too) binds the port, no other program can take it in between."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("localhost", 0))
    return held


def _two_processes(code: str, *args) -> list[dict]:
    with _held_port() as held:
        port = held.getsockname()[1]
        children = [run_script(_with_argv(code, pid, port, *args), devices=2, wait=False) for pid in range(2)]
        results = []
        for child in children:
            out, _ = child.communicate(timeout=300)
            assert child.returncode == 0, out[-4000:]
            results.append(json.loads(out.split("RESULT")[-1]))
    return results


def _with_argv(code: str, *argv) -> str:
    return f"import sys\nsys.argv = ['x'] + {[str(a) for a in argv]!r}\n" + code


def test_two_processes_match_one_process_with_four_devices(tmp_path):
    reference = json.loads(run_script(_with_argv(STEPS, 0, 0, 1), devices=4).split("RESULT")[-1])
    for result in _two_processes(STEPS, 2):
        for mode in ("jit", "pmap"):
            for got, want in zip(result[mode], reference[mode]):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=mode)
            assert abs(result[mode + "_loss"] - reference[mode + "_loss"]) < 1e-12


@pytest.mark.slow  # ~20 s on an idle 2-core machine: two processes each compile and run the loop
def test_two_process_training_loop_checkpoints_and_validates(tmp_path):
    from test_train_support import write_tiny_cache
    from paresseg_jax.train.checkpoint import Checkpoints

    cache = write_tiny_cache(tmp_path / "cache")
    workdir = tmp_path / "work"
    results = _two_processes(LOOP, cache, workdir)
    assert results[0]["best_global_dice"] == results[1]["best_global_dice"] is not None
    assert Checkpoints(workdir / "checkpoints", 3).latest_step() == 4
    assert len(list((workdir / "checkpoints" / "4").glob("data_iterator/*"))) >= 2  # one iterator state per process
    assert (workdir / "last_model" / "model.json").exists()
