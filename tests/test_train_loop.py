"""The training loop: smoke run, crash-safe resume, partial checkpoints, signals, non-finite stop."""

import json
import shutil
import textwrap

import jax
import numpy as np
import pytest

from test_train_support import run_script, tiny_config, write_tiny_cache
from paresseg_jax import model_io
from paresseg_jax.train import loop
from paresseg_jax.train.checkpoint import Checkpoints
from paresseg_jax import workdir as workdir_layout
from paresseg_jax.workdir import read_metrics

STEPS = 18

# A child that trains and kills (or signals) itself once checkpoint ``AT`` is committed.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time, json
    from pathlib import Path
    from test_train_support import tiny_config
    from paresseg_jax.train import train_and_evaluate
    cache, workdir, at, sig = sys.argv[1], Path(sys.argv[2]), sys.argv[3], getattr(signal, sys.argv[4])
    def watch():
        while not (workdir / "checkpoints" / at).exists():
            time.sleep(0.01)
        os.kill(os.getpid(), sig)
    threading.Thread(target=watch, daemon=True).start()
    print("RESULT" + json.dumps(train_and_evaluate(tiny_config(Path(cache), num_steps={steps}), str(workdir))))
    """
).format(steps=STEPS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = loop.train_and_evaluate(tiny_config(cache_dir, num_steps=STEPS), str(workdir))
    return workdir, result


def _child(cache_dir, workdir, at: int, signal_name: str):
    code = CHILD + "\n"
    return run_script(code.replace("sys.argv[1], Path(sys.argv[2]), sys.argv[3], getattr(signal, sys.argv[4])",
                                   f"{str(cache_dir)!r}, Path({str(workdir)!r}), {str(at)!r}, signal.{signal_name}"),
                      wait=False)


def _variables(workdir):
    _, variables, _ = model_io.load_model(workdir / workdir_layout.LAST_MODEL)
    return jax.tree.map(np.asarray, variables)


def test_smoke_training_decreases_loss_and_writes_everything(uninterrupted):
    workdir, result = uninterrupted
    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in train[:3]]), np.mean([r["loss"] for r in train[-3:]])
    print(f"smoke loss {first:.4f} -> {last:.4f}, val {[round(r['global_dice'], 4) for r in val]}")
    assert last < first
    assert [r["step"] for r in val] == [6, 12, 18]
    assert set(val[0]["case_dice"]) and 0 <= val[0]["global_dice"] <= 1
    assert Checkpoints(workdir / workdir_layout.CHECKPOINT_DIR, 3).latest_step() == STEPS
    assert (workdir / "best_model" / "model.json").exists() and (workdir / "last_model" / "model.json").exists()
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == STEPS
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert result["best_global_dice"] == max(r["global_dice"] for r in val)


def test_sigkill_then_sigterm_then_resume_equals_uninterrupted_bitwise(cache_dir, uninterrupted, tmp_path):
    workdir = tmp_path / "work"
    killed = _child(cache_dir, workdir, 6, "SIGKILL")
    out, _ = killed.communicate(timeout=300)
    assert killed.returncode == -9, out[-3000:]
    checkpoints = workdir / workdir_layout.CHECKPOINT_DIR
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 6 in steps and max(steps) < STEPS

    # A half-written step (orbax's temporary folder) must never be read.
    partial = checkpoints / f"{STEPS - 1}.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(checkpoints / "6", partial)
    for f in partial.rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])

    stopped = _child(cache_dir, workdir, 9, "SIGTERM")
    out, _ = stopped.communicate(timeout=300)
    assert stopped.returncode == 0, out[-3000:]
    result = json.loads(out.split("RESULT")[-1])
    assert result["stopped_by"] == "SIGTERM"
    assert not partial.exists()
    stopped_at = Checkpoints(checkpoints, 3).latest_step()
    assert 9 <= stopped_at < STEPS

    loop.train_and_evaluate(tiny_config(cache_dir, num_steps=STEPS), str(workdir))
    expected, got = _variables(uninterrupted[0]), _variables(workdir)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # Each step logged once (what the killed run logged past its checkpoint was dropped), as uninterrupted.
    logged = [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == "train"]
    assert logged == [(r["step"], r["loss"]) for r in read_metrics(uninterrupted[0]) if r["split"] == "train"]
    assert [step for step, _ in logged] == list(range(1, STEPS + 1))


def test_partial_step_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "5.orbax-checkpoint-tmp-99").mkdir(parents=True)
    (tmp_path / "5.orbax-checkpoint-tmp-99" / "state").write_text("garbage")
    assert Checkpoints(tmp_path, 2).latest_step() is None


def test_consecutive_non_finite_steps_stop_training_with_checkpoint_intact(tmp_path):
    cache_dir = write_tiny_cache(tmp_path / "cache", num_cases=5, seed=1)
    for weight in cache_dir.glob("*/weight.npy"):
        np.save(weight, np.full(np.load(weight).shape, np.nan, np.float32))
    config = tiny_config(cache_dir, loss="be", num_steps=20, max_consecutive_nonfinite=4, eval_every=100, parallel="jit")
    with pytest.raises(loop.NonFiniteTrainingError, match="4 consecutive steps"):
        loop.train_and_evaluate(config, str(tmp_path / "work"))
    checkpoints = Checkpoints(tmp_path / "work" / workdir_layout.CHECKPOINT_DIR, 3)
    assert checkpoints.latest_step() == 3
    assert not (tmp_path / "work" / workdir_layout.LAST_MODEL).exists()


def test_init_from_a_saved_model_starts_from_its_weights_and_refuses_another_model(uninterrupted, cache_dir):
    workdir, _ = uninterrupted
    config = tiny_config(cache_dir, init_from=str(workdir / workdir_layout.LAST_MODEL))
    module = loop.build_model(config)
    started = jax.tree.map(np.asarray, loop.initial_variables(config, module))
    saved = _variables(workdir)
    jax.tree.map(np.testing.assert_array_equal, started, saved)
    fresh = jax.tree.map(np.asarray, loop.initial_variables(tiny_config(cache_dir), module))
    assert not np.array_equal(jax.tree.leaves(fresh["params"])[0], jax.tree.leaves(saved["params"])[0])
    wider = tiny_config(cache_dir, init_from=str(workdir / workdir_layout.LAST_MODEL))
    wider.model.width = 8
    with pytest.raises(ValueError, match="do not fit"):
        loop.initial_variables(wider, loop.build_model(wider))


def test_metrics_writer_drops_records_past_the_resumed_checkpoint(tmp_path):
    from paresseg_jax.train.writers import MetricsWriter

    writer = MetricsWriter(tmp_path)
    for step in range(1, 8):
        writer.write(step, "train", {"loss": float(step)})
    writer.write(4, "val", {"global_dice": 0.5})
    writer.close()
    writer = MetricsWriter(tmp_path, resume_step=4)  # killed at step 7, last checkpoint at 4
    writer.write(5, "train", {"loss": 50.0})
    writer.close()
    assert [(r["step"], r["split"]) for r in read_metrics(tmp_path)] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "val"), (5, "train")]
    assert read_metrics(tmp_path)[-1]["loss"] == 50.0
