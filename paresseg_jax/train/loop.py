"""``train_and_evaluate(config, workdir)``: the whole training run, resumable at any point.

Order of events: prepare the cache (preprocessing is idempotent) -> split
the cases into train / validation / test and write ``split.json`` (the test
fold is never read here; validation is carved from the training folds) ->
build the model, optimizer and Grain loader -> restore the latest complete
checkpoint in ``workdir`` if there is one -> train, validating and
checkpointing periodically -> export ``last_model`` (and ``best_model``, the
best by validation global Dice, when there is validation) for inference.

A checkpoint holds the train state and the data iterator together, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
SIGTERM / SIGINT (preemption, Ctrl-C) finish the current step, save, and
return. The host reads the steps' metrics together every ``log_every`` steps,
so it never waits for the step it just dispatched and syncs with the device
once per log interval, not once per step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from paresseg_jax import absent_phases, losses, model_io, models, ops, runs
from paresseg_jax.atomic import write_text
from paresseg_jax.data.pipeline import make_train_loader
from paresseg_jax.errors import PareSegError
from paresseg_jax.train import step as step_lib
from paresseg_jax.train.checkpoint import BEST_METRIC, Checkpoints, abstract_like
from paresseg_jax.train.parallel import DataParallel
from paresseg_jax.train.state import create_train_state, learning_rate_schedule, make_optimizer
from paresseg_jax.train.validate import validate
from paresseg_jax.train.writers import MetricsWriter
from paresseg_jax.workdir import BEST_MODEL, CHECKPOINT_DIR, CONFIG_FILE, LAST_MODEL, STATUS_FILE, read_config, read_status

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised after too many consecutive non-finite steps; the last checkpoint is left intact."""


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop polls (then saves and returns)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self) -> bool:
        """True on every process as soon as any process got a signal (all stop at the same step)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        return bool(np.asarray(multihost_utils.process_allgather(np.int32(local))).any())


def _write_status(workdir: Path, state: str, step: int, total_steps: int, stopped_by: str | None = None) -> None:
    if jax.process_index() == 0:
        status = {"state": state, "step": int(step), "total_steps": int(total_steps), "stopped_by": stopped_by}
        write_text(workdir / STATUS_FILE, json.dumps(status, indent=1))


def _as_json(config) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=list))


# What a resumed run may change: its length (it continues to the new end; scores carry the config they used).
LENGTH_KEYS = ("train.num_steps", "train.num_epochs")


def _write_config(config, workdir: Path) -> None:
    """``config.json``; a workdir that holds another run's config is refused, never relabelled (only the training
    length may change: the run then continues to the new end)."""
    previous = read_config(workdir)
    changed = [] if previous is None else [k for k in _changed_keys(previous, _as_json(config)) if k not in LENGTH_KEYS]
    if changed:
        raise PareSegError(f"this workdir holds a run of another config (differing: {', '.join(changed[:6])})",
                           path=workdir / CONFIG_FILE, fix="use a new --workdir, or the config it was trained with")
    if jax.process_index() == 0:
        settings = config.to_dict()
        settings["model"] = models.registry.recorded_spec(settings["model"])
        write_text(workdir / CONFIG_FILE, json.dumps(settings, indent=1, default=list))


def _changed_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix.rstrip(".") or "(whole config)"] if a != b else []
    return [k for key in sorted(set(a) | set(b)) for k in _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")]


def is_finished(config: ml_collections.ConfigDict, workdir: str | Path) -> bool:
    """Whether ``workdir`` holds a finished run of exactly ``config`` (nothing left to train)."""
    status = read_status(workdir)
    return status is not None and status["state"] == "finished" and read_config(workdir) == _as_json(config)


def train_unless_finished(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
    """What cross-validation, the demo and the ablation call: :func:`train_and_evaluate` (a new run, or one
    stopped, resumed) unless ``workdir`` holds a finished run of exactly ``config`` (None then)."""
    if is_finished(config, workdir):
        return None
    return train_and_evaluate(config, str(workdir))


def _export(workdir: Path, name: str, config, host_variables) -> None:
    """Saved-model folder for inference (every process calls it; orbax writes once). The spec also records the
    phase dropout the model was trained with, which decides whether inference may leave a phase out."""
    spec = {**runs.model_spec(config), absent_phases.SPEC_KEY: float(config.train.get("phase_dropout", 0.0))}
    model_io.save_model(workdir / name, spec, host_variables)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train per ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the last metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
    run = _prepare(config, workdir)
    start, state, meta = _restore(run)
    writer = MetricsWriter(workdir, resume_step=start)
    _write_status(workdir, "running", start, run.total_steps)
    is_main = jax.process_index() == 0
    bar = tqdm(total=run.total_steps, initial=start, disable=not is_main, desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    try:
        with _StopSignals() as signals:
            state, meta, last, reached, stopped_by = _train_steps(run, state, start, meta, writer, signals, bar)
    finally:
        bar.close()
        run.checkpoints.wait()
        run.checkpoints.close()
        writer.close()
    _export(workdir, LAST_MODEL, config, run.parallel.host_state(state).variables)
    _write_status(workdir, "finished" if reached >= run.total_steps else "stopped", reached, run.total_steps, stopped_by)
    elapsed = time.perf_counter() - started
    if is_main:
        if stopped_by:
            log.warning("stopped by %s; checkpoint saved in %s, rerun the same command to resume", stopped_by, workdir)
        log.info("done: %s (%.1f s)", last, elapsed)
    return {**last, "stopped_by": stopped_by, "best_global_dice": meta["best_global_dice"], "seconds": elapsed}


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the steps of one training work with (:func:`_prepare` builds it once)."""

    config: ml_collections.ConfigDict
    workdir: Path
    val_cases: list
    total_steps: int
    parallel: DataParallel
    module: Any
    tx: Any
    iterator: Any
    checkpoints: Checkpoints


def _prepare(config: ml_collections.ConfigDict, workdir: Path) -> _Run:
    """The run's cases (``split.json`` written), length, devices, model, optimizer, data iterator, checkpoints."""
    cases = runs.fold_cases(config)
    runs.check_checkpoint_choice(config, bool(cases["validation"]))
    runs.write_split(workdir, config, cases)
    train = config.train
    total_steps = runs.num_train_steps(config, cases["train"])
    parallel = DataParallel(train.parallel)
    parallel.check_batch_size(train.batch_size)
    loader = make_train_loader(config, cases["train"], seed=config.seed, local_device_count=len(parallel.local_devices))
    return _Run(config, workdir, cases["validation"], total_steps, parallel, runs.build_model(config, parallel.bn_axis_name),
                make_optimizer(train, total_steps), iter(loader), Checkpoints(workdir / CHECKPOINT_DIR, train.keep_checkpoints))


def _restore(run: _Run) -> tuple[int, Any, dict]:
    """``(step, device state, best-model meta)`` of the newest readable checkpoint (the data iterator restored
    with it), else of a fresh start."""
    # A checkpoint holds every value: its layout is all we need, so nothing is initialised or compiled
    # (PA-ResSeg's init compiles for 4-9 s on a 2-core CPU).
    shapes = jax.eval_shape(lambda v: create_train_state(v, run.tx, run.config.seed), models.variable_shapes(run.module))
    resumed = run.checkpoints.restore_newest_readable(abstract_like(shapes, run.parallel.replicated), run.iterator)
    if resumed is None:
        fresh = create_train_state(runs.initial_variables(run.config, run.module), run.tx, run.config.seed)
        return 0, run.parallel.put_state(fresh), {"best_global_dice": None, "best_step": None}
    start, restored, meta = resumed
    if jax.process_index() == 0:
        log.info("resumed from %s step %d", run.checkpoints.directory, start)
    return start, run.parallel.put_state(restored), meta


def _train_steps(run: _Run, state, start: int, meta: dict, writer, signals, bar) -> tuple:
    """Steps ``start + 1`` to the last, validating and checkpointing on schedule, until done or a stop signal;
    returns ``(state, meta, last metrics, step reached, stopped_by)``."""
    train = run.config.train
    train_step = _compiled_train_step(run)
    eval_module = runs.build_model(run.config)
    streak, last, pending = 0, {}, []  # pending: (step, device metrics) not read yet, read every log_every steps
    stopped_by, reached = None, start
    for step in range(start + 1, run.total_steps + 1):
        state, metrics = train_step(state, run.parallel.put_batch(next(run.iterator)))
        pending.append((step, metrics))
        if step % train.log_every == 0:
            last, streak = _account(pending, run.parallel, streak, train, writer, bar)
            pending = []
        bar.update(1)
        val = None
        if run.val_cases and (step % train.eval_every == 0 or step == run.total_steps):
            val, meta = _validate(run, eval_module, state, step, meta, writer)
            bar.set_postfix(loss=last.get("loss"), val_dice=val[BEST_METRIC])
        stop = signals.should_stop()
        if val is not None or stop or step % train.checkpoint_every == 0 or step == run.total_steps:
            scored = {BEST_METRIC: val[BEST_METRIC]} if val is not None else None
            run.checkpoints.save(step, run.parallel.global_state(state), run.iterator, meta, scored)
        reached = step
        if stop:
            stopped_by = signals.received or "a signal on another process"
            break
    if pending:
        last, streak = _account(pending, run.parallel, streak, train, writer, bar)
    return state, meta, last, reached, stopped_by


def _compiled_train_step(run: _Run):
    """The run's step wrapped for its parallel mode, kept per process for equal runs: a cross-validation's
    folds, or equal models of a demo or an ablation, trace and compile it once (a width-4 ResSeg: ~6 s each).
    The convolution chosen by the caller's `ops.conv_impl` block is part of the key (it acts at trace time)."""
    key = (run.module, json.dumps(_as_json(run.config.train), sort_keys=True), run.total_steps, run.parallel.mode,
           tuple(run.parallel.devices), ops.current_conv_impl())
    return models.cached_for(run.module, _wrapped_train_step)(*key)


@functools.lru_cache(maxsize=4)
def _wrapped_train_step(module, train_json: str, total_steps: int, mode: str, devices: tuple, conv_impl: str):
    train = json.loads(train_json)
    parallel = DataParallel(mode, devices)
    step = step_lib.make_train_step(module, make_optimizer(train, total_steps), losses.get_loss(train["loss"]),
                                    learning_rate_schedule(train, total_steps), parallel.bn_axis_name)
    return parallel.wrap_train_step(step)  # traced by callers in `conv_impl`'s block: the key keeps them apart


def _validate(run: _Run, eval_module, state, step: int, meta: dict, writer) -> tuple[dict, dict]:
    """Validation metrics at ``step`` and the best-model meta; a new best is exported as ``best_model``."""
    variables = run.parallel.host_state(state).variables
    result = validate(eval_module, jax.device_put(variables, run.parallel.local_devices[0]), run.val_cases,
                      run.config.eval.to_dict(), run.config.data.target)
    writer.write(step, "val", result)
    if meta["best_global_dice"] is None or result[BEST_METRIC] > meta["best_global_dice"]:
        meta = {"best_global_dice": result[BEST_METRIC], "best_step": step}
        _export(run.workdir, BEST_MODEL, run.config, variables)
    return result, meta


def _account(pending, parallel, streak, train, writer, bar) -> tuple[dict, int]:
    """Read the pending steps' metrics in one host synchronisation, enforce ``max_consecutive_nonfinite``
    (a skipped step leaves the state as it was, so finding a streak up to ``log_every`` steps late loses
    nothing) and log the last step on a ``log_every`` boundary."""
    fetched = parallel.host_metrics([metrics for _, metrics in pending])
    for (step, _), values in zip(pending, fetched):
        streak = streak + 1 if values["nonfinite"] else 0
        if values["nonfinite"] and jax.process_index() == 0:
            log.warning("step %d: non-finite loss or gradient (%s); update skipped (%d in a row)", step, values["loss"], streak)
        if streak >= train.max_consecutive_nonfinite:
            raise NonFiniteTrainingError(
                f"{streak} consecutive steps up to step {step} had a non-finite loss or gradient, so training "
                "stopped. The last checkpoint is intact; lower config.train.learning_rate or use "
                "config.model.dtype='float32', then rerun to resume"
            )
    step, values = pending[-1][0], fetched[-1]
    if step % train.log_every == 0:
        values["steps_per_second"] = bar.format_dict["rate"] or 0.0
        writer.write(step, "train", values)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
    return values, streak
