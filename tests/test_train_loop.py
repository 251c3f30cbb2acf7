"""The training loop: smoke run, crash-safe resume, partial checkpoints, signals, non-finite stop."""

import contextlib
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from test_train_support import run_script, tiny_config, write_tiny_cache
from paresseg_jax import model_io, ops, runs
from paresseg_jax.train import loop
from paresseg_jax.train.checkpoint import Checkpoints
from paresseg_jax import workdir as workdir_layout
from paresseg_jax.errors import PareSegError
from paresseg_jax.workdir import read_metrics

pytestmark = pytest.mark.xdist_group("train_loop")  # one worker builds the uninterrupted run for every test

STEPS = 18
# PA-ResSeg at width 4: its compilation in four processes, not its steps, is what costs (~100 s a process
# on a loaded 2-core CPU), hence the slow tier. Its SIGTERM at step 6 needs steps left to land in.
PARESSEG_STEPS = 12

# A child that trains and signals itself (SIGKILL, SIGTERM) as soon as checkpoint ``AT`` is committed (never, for
# AT "-"): in the save itself, not by polling the folder, so no step runs in between however loaded the machine.
# A script file with a main guard: Grain's worker processes (worker_count > 0) import the main module.
CHILD = textwrap.dedent(
    """
    import os, signal, json
    from pathlib import Path
    from test_train_support import tiny_config
    from paresseg_jax.train import train_and_evaluate
    from paresseg_jax.train.checkpoint import Checkpoints

    def signal_after(at, sig):
        save = Checkpoints.save
        def save_then_signal(self, step, *args, **kwargs):
            save(self, step, *args, **kwargs)
            if step == at:
                self.wait()
                os.kill(os.getpid(), sig)
        Checkpoints.save = save_then_signal

    if __name__ == "__main__":
        cache, workdir, at, sig, model, steps, workers = {arguments}
        if at != "-":
            signal_after(int(at), sig)
        config = tiny_config(Path(cache), num_steps=steps)
        config.data.worker_count = workers
        if model != "tiny":
            config.model.name = model
        print("RESULT" + json.dumps(train_and_evaluate(config, str(workdir))))
    """
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = loop.train_and_evaluate(tiny_config(cache_dir, num_steps=STEPS), str(workdir))
    return workdir, result


def _child(cache_dir, workdir, at, signal_name: str, model: str = "tiny", steps: int = STEPS, xla_cache=None,
           workers: int = 0) -> tuple[int, str]:
    """The child's exit status and output, once it has ended."""
    arguments = (f"{str(cache_dir)!r}, Path({str(workdir)!r}), {str(at)!r}, signal.{signal_name}, {model!r}, "
                 f"{steps}, {workers}")
    env = None if xla_cache is None else {"JAX_COMPILATION_CACHE_DIR": str(xla_cache),
                                          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    script = Path(workdir).parent / f"child_{Path(workdir).name}_{at}_{signal_name}.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(CHILD.format(arguments=arguments))
    log = script.with_suffix(".log")
    process = run_script(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')", wait=False, env=env,
                         log=log)
    try:
        process.wait(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # Grain's workers outlive a killed child: end its group
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, log.read_text(encoding="utf-8", errors="replace")


def _variables(workdir):
    _, variables, _ = model_io.load_model(workdir / workdir_layout.LAST_MODEL)
    return jax.tree.map(np.asarray, variables)


def _stored_tree(folder):
    """Every array of an orbax folder as stored (no target tree: nothing is cast or reshaped)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return jax.tree.map(np.asarray, ckptr.restore(folder))


def _assert_same_bits(expected, got):
    """Same leaf names and count, and the same bits in every leaf (viewed as unsigned integers, so that
    -0.0 vs 0.0 or two NaN payloads would differ too)."""
    expected, got = (jax.tree_util.tree_leaves_with_path(tree) for tree in (expected, got))
    assert [jax.tree_util.keystr(k) for k, _ in got] == [jax.tree_util.keystr(k) for k, _ in expected]
    assert len(got) == len(expected) > 0
    for (path, a), (_, b) in zip(expected, got):
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        bits = np.dtype(f"uint{8 * a.dtype.itemsize}")
        np.testing.assert_array_equal(np.ascontiguousarray(a).view(bits), np.ascontiguousarray(b).view(bits),
                                      err_msg=jax.tree_util.keystr(path))


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
    # Test fold 0 of 5 (one case per fold), validation one of the other four (val_fraction 0.2), all disjoint.
    split = workdir_layout.read_split(workdir)
    train_ids, val_ids, test_ids = (set(split[k]) for k in ("train", "validation", "test"))
    assert len(test_ids) == 1 and len(val_ids) == 1 and len(train_ids) == 3
    assert train_ids | val_ids | test_ids == {f"case{i:02d}" for i in range(5)}
    assert set(val[0]["case_dice"]) == val_ids  # validation never scores a test case
    assert split["fold"] == 0 and split["num_folds"] == 5 and split["val_fraction"] == 0.2


def test_without_validation_cases_there_is_no_best_model_and_best_is_refused(cache_dir, tmp_path):
    config = tiny_config(cache_dir, num_steps=2, eval_every=1)
    config.data.val_fraction = 0.0
    config.eval.checkpoint = "best"
    with pytest.raises(PareSegError, match="val_fraction"):
        loop.train_and_evaluate(config, str(tmp_path / "refused"))
    config.eval.checkpoint = "last"
    result = loop.train_and_evaluate(config, str(tmp_path / "work"))
    assert result["best_global_dice"] is None
    assert not [r for r in read_metrics(tmp_path / "work") if r["split"] == "val"]
    assert (tmp_path / "work" / "last_model").is_dir() and not (tmp_path / "work" / "best_model").exists()
    assert workdir_layout.read_split(tmp_path / "work")["validation"] == []
    config.data.fold = 1  # a resumed run must not silently change its split (nor its config.json)
    with pytest.raises(PareSegError, match=r"another config \(differing: data.fold\)"):
        loop.train_and_evaluate(config, str(tmp_path / "work"))


@pytest.mark.parametrize("model", ["tiny", pytest.param("paresseg", marks=pytest.mark.slow)])
def test_sigkill_then_sigterm_then_resume_equals_uninterrupted_bitwise(cache_dir, uninterrupted, tmp_path, model):
    """Killed, damaged, stopped, resumed: parameters, batch statistics, optimizer moments, step count and the
    logged losses are bit for bit those of a run that never stopped (the stand-in and PA-ResSeg at width 4)."""
    steps, kill_at, stop_at = (STEPS, 6, 9) if model == "tiny" else (PARESSEG_STEPS, 3, 6)
    xla_cache = tmp_path / "xla"  # the PA-ResSeg children compile once between them
    if model == "tiny":
        reference = uninterrupted[0]
    else:
        reference = tmp_path / "uninterrupted"
        status, out = _child(cache_dir, reference, "-", "SIGKILL", model, steps, xla_cache)
        assert status == 0, out[-3000:]
    workdir = tmp_path / "work"
    status, out = _child(cache_dir, workdir, kill_at, "SIGKILL", model, steps, xla_cache)
    assert status == -9, out[-3000:]
    checkpoints = workdir / workdir_layout.CHECKPOINT_DIR
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert kill_at in saved and max(saved) < steps

    # A half-written step (orbax's temporary folder) must never be read.
    partial = checkpoints / f"{steps - 1}.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(checkpoints / str(kill_at), partial)
    for f in partial.rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])

    status, out = _child(cache_dir, workdir, stop_at, "SIGTERM", model, steps, xla_cache)
    assert status == 0, out[-3000:]
    result = json.loads(out.split("RESULT")[-1])
    assert result["stopped_by"] == "SIGTERM"
    assert not partial.exists()
    stopped_step = Checkpoints(checkpoints, 3).latest_step()
    assert stop_at <= stopped_step < steps

    status, out = _child(cache_dir, workdir, "-", "SIGKILL", model, steps, xla_cache)
    assert status == 0, out[-3000:]
    _assert_same_bits(_stored_tree(reference / workdir_layout.CHECKPOINT_DIR / str(steps) / "state"),
                      _stored_tree(checkpoints / str(steps) / "state"))  # the whole TrainState, optimizer included
    _assert_same_bits(_variables(reference), _variables(workdir))  # the exported model
    # Each step logged once (what the killed run logged past its checkpoint was dropped), as uninterrupted.
    logged = [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == "train"]
    assert logged == [(r["step"], r["loss"]) for r in read_metrics(reference) if r["split"] == "train"]
    assert [step for step, _ in logged] == list(range(1, steps + 1))


def test_a_run_with_grain_workers_killed_then_resumed_equals_uninterrupted_bitwise(cache_dir, tmp_path):
    """With the default two Grain worker processes (their iterator state is saved beside the model) a hard kill
    and a rerun give the weights and logged losses of a run with two workers that never stopped."""
    reference = tmp_path / "uninterrupted"  # a child too: Grain's workers need a main module they can import
    status, out = _child(cache_dir, reference, "-", "SIGKILL", workers=2)
    assert status == 0, out[-3000:]
    workdir = tmp_path / "work"
    status, out = _child(cache_dir, workdir, 6, "SIGKILL", workers=2)
    assert status == -9, out[-3000:]
    assert max(int(p.name) for p in (workdir / workdir_layout.CHECKPOINT_DIR).iterdir() if p.name.isdigit()) == 6
    status, out = _child(cache_dir, workdir, "-", "SIGKILL", workers=2)
    assert status == 0, out[-3000:]
    _assert_same_bits(_variables(reference), _variables(workdir))
    logged = [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == "train"]
    assert logged == [(r["step"], r["loss"]) for r in read_metrics(reference) if r["split"] == "train"]
    assert [step for step, _ in logged] == list(range(1, STEPS + 1))


def test_equal_runs_in_one_process_build_their_step_once_and_train_the_same_bits(cache_dir, uninterrupted, tmp_path,
                                                                                   monkeypatch):
    """A cross-validation's folds, or the demo's equal models, trace and compile their step once per process, and
    train what a fresh build trains: the uninterrupted run's weights, bit for bit. Another length, or another
    convolution (`ops.conv_impl`), is another step."""
    builds = []
    make = loop.step_lib.make_train_step
    monkeypatch.setattr(loop.step_lib, "make_train_step", lambda *args: builds.append(args) or make(*args))
    loop._wrapped_train_step.cache_clear()
    for name in ("first", "second"):
        loop.train_and_evaluate(tiny_config(cache_dir, num_steps=STEPS), str(tmp_path / name))
        _assert_same_bits(_variables(uninterrupted[0]), _variables(tmp_path / name))
    assert len(builds) == 1
    loop.train_and_evaluate(tiny_config(cache_dir, num_steps=3), str(tmp_path / "shorter"))
    assert len(builds) == 2
    with ops.conv_impl("xla"):  # the convolution is chosen at trace time: a step of its own
        loop.train_and_evaluate(tiny_config(cache_dir, num_steps=3), str(tmp_path / "xla"))
    assert len(builds) == 3


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_good_one(cache_dir, uninterrupted, tmp_path, caplog):
    workdir = tmp_path / "work"
    shutil.copytree(uninterrupted[0], workdir)
    checkpoints = workdir / workdir_layout.CHECKPOINT_DIR
    shutil.rmtree(workdir / workdir_layout.LAST_MODEL)
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert kept[-1] == STEPS and len(kept) >= 2
    for f in (checkpoints / str(STEPS) / "state").rglob("*"):  # a disk error in the newest step's arrays
        if f.is_file():
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with caplog.at_level("WARNING"):
        loop.train_and_evaluate(tiny_config(cache_dir, num_steps=STEPS), str(workdir))
    previous = kept[-2]
    assert f"checkpoint step {STEPS} in {checkpoints} cannot be restored" in caplog.text
    assert f"set aside as {checkpoints / f'{STEPS}.damaged'}, resuming from step {previous}" in caplog.text
    assert (checkpoints / f"{STEPS}.damaged").is_dir()
    _assert_same_bits(_variables(uninterrupted[0]), _variables(workdir))  # the steps after it were retrained


def test_unreadable_checkpoints_are_one_error_naming_the_folder(cache_dir, uninterrupted, tmp_path):
    from paresseg_jax.errors import BadInputError

    workdir = tmp_path / "work"
    shutil.copytree(uninterrupted[0] / workdir_layout.CHECKPOINT_DIR, workdir / workdir_layout.CHECKPOINT_DIR)
    wider = tiny_config(cache_dir, num_steps=STEPS)
    wider.model.width = 8
    with pytest.raises(BadInputError, match=r"checkpoints: none of the checkpoints .* can be restored.*new --workdir"):
        loop.train_and_evaluate(wider, str(workdir))


def test_partial_step_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "5.orbax-checkpoint-tmp-99").mkdir(parents=True)
    (tmp_path / "5.orbax-checkpoint-tmp-99" / "state").write_text("garbage")
    assert Checkpoints(tmp_path, 2).latest_step() is None


@pytest.mark.parametrize("log_every", [1, 5])  # 5: the streak is found in the batch of metrics read at step 5
def test_consecutive_non_finite_steps_stop_training_with_checkpoint_intact(tmp_path, log_every):
    cache_dir = write_tiny_cache(tmp_path / "cache", num_cases=5, seed=1)
    for weight in cache_dir.glob("*/weight.npy"):
        np.save(weight, np.full(np.load(weight).shape, np.nan, np.float32))
    config = tiny_config(cache_dir, loss="be", num_steps=20, max_consecutive_nonfinite=4, eval_every=100, parallel="jit",
                         log_every=log_every)
    with pytest.raises(loop.NonFiniteTrainingError, match="4 consecutive steps up to step 4 "):
        loop.train_and_evaluate(config, str(tmp_path / "work"))
    checkpoints = Checkpoints(tmp_path / "work" / workdir_layout.CHECKPOINT_DIR, 3)
    assert checkpoints.latest_step() == 3
    assert not (tmp_path / "work" / workdir_layout.LAST_MODEL).exists()


def test_init_from_a_saved_model_starts_from_its_weights_and_refuses_another_model(uninterrupted, cache_dir):
    workdir, _ = uninterrupted
    config = tiny_config(cache_dir, init_from=str(workdir / workdir_layout.LAST_MODEL))
    module = runs.build_model(config)
    started = jax.tree.map(np.asarray, runs.initial_variables(config, module))
    saved = _variables(workdir)
    jax.tree.map(np.testing.assert_array_equal, started, saved)
    fresh = jax.tree.map(np.asarray, runs.initial_variables(tiny_config(cache_dir), module))
    assert not np.array_equal(jax.tree.leaves(fresh["params"])[0], jax.tree.leaves(saved["params"])[0])
    wider = tiny_config(cache_dir, init_from=str(workdir / workdir_layout.LAST_MODEL))
    wider.model.width = 8
    with pytest.raises(ValueError, match="do not fit"):
        runs.initial_variables(wider, runs.build_model(wider))


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


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    from paresseg_jax.errors import BadInputError
    from paresseg_jax.train.writers import MetricsWriter

    lines = [json.dumps({"step": step, "split": "train", "loss": float(step)}) for step in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "split": "tr')  # killed mid-append
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    writer = MetricsWriter(tmp_path, resume_step=5)
    writer.write(6, "train", {"loss": 6.0})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n{damaged\n" + lines[2] + "\n")
    with pytest.raises(BadInputError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(tmp_path)


def test_a_stopped_training_is_recorded_as_stopped_and_a_rerun_finishes_it(cache_dir, tmp_path, monkeypatch):
    from paresseg_jax.workdir import check_finished, read_status

    config = tiny_config(cache_dir, num_steps=3, eval_every=100)
    workdir = tmp_path / "work"
    monkeypatch.setattr(loop._StopSignals, "should_stop", lambda self: True)  # a signal during the first step
    assert loop.train_and_evaluate(config, str(workdir))["stopped_by"]
    assert read_status(workdir) == {"state": "stopped", "step": 1, "total_steps": 3,
                                    "stopped_by": "a signal on another process"}
    with pytest.raises(PareSegError, match="stopped .* at step 1 of 3, not finished"):
        check_finished(workdir)
    monkeypatch.undo()
    loop.train_and_evaluate(config, str(workdir))
    assert read_status(workdir)["state"] == "finished" and read_status(workdir)["step"] == 3
    check_finished(workdir)
    assert loop.train_unless_finished(config, workdir) is None  # finished: nothing to do
    config.train.loss = "be"  # another config is refused, never written over the run's
    with pytest.raises(PareSegError, match=r"another config \(differing: train.loss\)"):
        loop.train_unless_finished(config, workdir)
    assert json.loads((workdir / "config.json").read_text())["train"]["loss"] == "ce"
