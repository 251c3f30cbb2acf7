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

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from paresseg_jax import absent_phases, losses, model_io, models
from paresseg_jax.atomic import write_text
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.data import splits
from paresseg_jax.data.pipeline import LiverSliceSource, make_train_loader
from paresseg_jax.errors import PareSegError
from paresseg_jax.train import step as step_lib
from paresseg_jax.train.checkpoint import BEST_METRIC, Checkpoints, abstract_like
from paresseg_jax.train.parallel import DataParallel
from paresseg_jax.train.state import create_train_state, learning_rate_schedule, make_optimizer
from paresseg_jax.train.validate import validate
from paresseg_jax.train.writers import MetricsWriter
from paresseg_jax.workdir import (BEST_MODEL, CHECKPOINT_CHOICES, CHECKPOINT_DIR, CONFIG_FILE, LAST_MODEL, SPLIT_FILE,
                                  STATUS_FILE, read_config, read_split, read_status)

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


def _model_spec(config) -> dict:
    return config.model.to_dict()


def build_model(config, bn_axis_name: str | None = None):
    """The configured model; ``bn_axis_name`` only for pmap training (not part of the saved spec)."""
    spec = _model_spec(config)
    options = {k: v for k, v in spec.items() if k != "name"}
    if bn_axis_name is not None:
        options["bn_axis_name"] = bn_axis_name
    return models.create(spec["name"], **options)


def prepared_cache(config) -> Path:
    """The preprocessed cache: ``config.data.cache_dir`` as is, or ``config.data.cohort_dir``
    preprocessed (idempotently) into ``config.data.cache_root`` (default: ``<cohort_dir>_cache``)."""
    data = config.data
    if data.cohort_dir:
        from paresseg_jax.data.preprocess import preprocess_cohort

        cohort = Path(data.cohort_dir)
        root = data.cache_root or cohort.with_name(cohort.name + "_cache")
        options = data.preprocess.to_dict()

        def prepare():
            return preprocess_cohort(
                cohort, root, options, progress=jax.process_index() == 0, workers=data.preprocess_workers
            )

        # Process 0 does the work; the others then find every case cached (shared disk) or make their own.
        cache_dir = prepare() if jax.process_index() == 0 else None
        multihost_utils.sync_global_devices("paresseg preprocessing done")
        return cache_dir if cache_dir is not None else prepare()
    if data.cache_dir:
        return Path(data.cache_dir)
    raise ValueError(
        "config.data.cohort_dir (a cohort to preprocess) or config.data.cache_dir (a preprocessed cache) must be "
        "set, e.g. --config.data.cohort_dir=/path/to/cohort (make one with paresseg-make-phantom)"
    )


def split_ids(config, records) -> dict[str, list[str]]:
    """``{'train', 'validation', 'test'}`` case ids of case ``records`` (manifest entries or cached cases'
    meta): fold ``config.data.fold`` of the patient-level, tumor-type-stratified folds (or the manifest's) is
    the test set; ``config.data.val_fraction`` of the other folds' patients is validation."""
    data = config.data
    return splits.cohort_split(records, data.fold, data.num_folds, float(data.val_fraction), data.fold_seed)


def fold_cases(config) -> dict[str, list]:
    """The cached cases of :func:`split_ids`'s three sets, by set name: the cohort's manifest cases (with
    ``config.data.cohort_dir``; never other cases a shared cache folder holds), else the cache's."""
    cache_dir = prepared_cache(config)
    if config.data.cohort_dir:
        from paresseg_jax.data.layouts import read_cohort

        records = [{**e.metadata, "case_id": e.case_id} for e in read_cohort(config.data.cohort_dir)]
        cases = cache_lib.open_cohort(cache_dir, [r["case_id"] for r in records])
    else:
        cases = cache_lib.open_cohort(cache_dir)
        records = [c.metadata for c in cases]
    by_id = {c.case_id: c for c in cases}
    return {part: [by_id[i] for i in ids] for part, ids in split_ids(config, records).items()}


def check_checkpoint_choice(config, has_validation: bool) -> str:
    """``config.eval.checkpoint``: 'last' (the paper: the model at the end of training) or 'best' (by
    validation global Dice, so it needs validation cases)."""
    choice = config.eval.checkpoint
    if choice not in CHECKPOINT_CHOICES:
        raise PareSegError(f"config.eval.checkpoint={choice!r} is unknown", fix=f"use one of {sorted(CHECKPOINT_CHOICES)}")
    if choice == "best" and not has_validation:
        raise PareSegError(
            "config.eval.checkpoint='best' chooses the model on validation cases, but "
            f"config.data.val_fraction={config.data.val_fraction} leaves none",
            fix="set config.data.val_fraction > 0 (e.g. 0.2) or config.eval.checkpoint='last'",
        )
    return choice


def _write_split(workdir: Path, config, cases: dict[str, list]) -> None:
    """``split.json``: the run's case ids by set; a resumed run must find the same split."""
    split = {part: [c.case_id for c in members] for part, members in cases.items()}
    data = config.data
    split["fold"], split["num_folds"], split["fold_seed"] = int(data.fold), int(data.num_folds), int(data.fold_seed)
    split["val_fraction"] = float(data.val_fraction)
    previous = read_split(workdir)
    if previous is not None and previous != split:
        raise PareSegError(
            "this workdir was trained on another train/validation/test split than the config now gives",
            path=workdir / SPLIT_FILE, fix="use a new --workdir, or the config (data.fold, num_folds, fold_seed, "
            "val_fraction, the cohort) it was trained with",
        )
    if jax.process_index() == 0:
        write_text(workdir / SPLIT_FILE, json.dumps(split, indent=1))


def num_train_steps(config, train_cases) -> int:
    """``config.train.num_steps`` if positive, else ``num_epochs`` passes over the training slices."""
    train = config.train
    if train.num_steps > 0:
        return int(train.num_steps)
    source = LiverSliceSource(
        train_cases,
        tumor_free_fraction=config.data.tumor_free_fraction,
        seed=config.seed,
        target=config.data.target,
    )
    records = len(source)
    return int(train.num_epochs) * max(1, math.ceil(records / train.batch_size))


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


def train_unless_finished(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
    """What cross-validation, the demo and the ablation call: :func:`train_and_evaluate` (a new run, or one
    stopped, resumed) unless ``workdir`` holds a finished run of exactly ``config`` (None then)."""
    status = read_status(workdir)
    if status is not None and status["state"] == "finished" and read_config(workdir) == _as_json(config):
        return None
    return train_and_evaluate(config, str(workdir))


def _export(workdir: Path, name: str, config, host_variables) -> None:
    """Saved-model folder for inference (every process calls it; orbax writes once). The spec also records the
    phase dropout the model was trained with, which decides whether inference may leave a phase out."""
    spec = {**_model_spec(config), absent_phases.SPEC_KEY: float(config.train.get("phase_dropout", 0.0))}
    model_io.save_model(workdir / name, spec, host_variables)


def initial_variables(config, module) -> dict:
    """Fresh weights from the seed, or ``config.train.init_from``: a saved model (e.g. a PyTorch
    checkpoint converted by ``paresseg-convert``) or a training workdir, whose model spec must match."""
    source = config.train.get("init_from", "")
    if not source:
        return models.init_variables(module, jax.random.PRNGKey(config.seed))
    _, variables, spec = model_io.load_model(source)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    wanted = models.variable_shapes(module)
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if shapes(variables) != shapes(wanted):
        raise ValueError(
            f"config.train.init_from={source} holds model {spec}, whose weights do not fit the configured "
            f"model {_model_spec(config)}; make config.model match it (name, width, in_channels, num_classes, "
            "attention, fusion, phases)"
        )
    return variables


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train per ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the last metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
    train = config.train
    is_main = jax.process_index() == 0

    cases = fold_cases(config)
    train_cases, val_cases = cases["train"], cases["validation"]
    check_checkpoint_choice(config, bool(val_cases))
    _write_split(workdir, config, cases)
    total_steps = num_train_steps(config, train_cases)
    parallel = DataParallel(train.parallel)
    parallel.check_batch_size(train.batch_size)
    module = build_model(config, parallel.bn_axis_name)
    schedule = learning_rate_schedule(train, total_steps)
    tx = make_optimizer(train, total_steps)

    loader = make_train_loader(config, train_cases, seed=config.seed, local_device_count=len(parallel.local_devices))
    iterator = iter(loader)
    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, train.keep_checkpoints)
    meta = {"best_global_dice": None, "best_step": None}
    # A checkpoint holds every value: its layout is all we need, so nothing is initialised or compiled
    # (PA-ResSeg's init compiles for 4-9 s on a 2-core CPU).
    shapes = jax.eval_shape(lambda v: create_train_state(v, tx, config.seed), models.variable_shapes(module))
    resumed = checkpoints.restore_newest_readable(abstract_like(shapes, parallel.replicated), iterator)
    if resumed is None:
        state = parallel.put_state(create_train_state(initial_variables(config, module), tx, config.seed))
        start = 0
    else:
        start, restored, meta = resumed
        state = parallel.put_state(restored)
        if is_main:
            log.info("resumed from %s step %d", checkpoints.directory, start)

    train_step = parallel.wrap_train_step(
        step_lib.make_train_step(module, tx, losses.get_loss(train.loss), schedule, parallel.bn_axis_name)
    )
    eval_module = build_model(config)
    writer = MetricsWriter(workdir, resume_step=start)

    def run_validation(step: int, state) -> dict:
        variables = jax.device_put(parallel.host_state(state).variables, parallel.local_devices[0])
        result = validate(eval_module, variables, val_cases, config.eval.to_dict(), config.data.target)
        writer.write(step, "val", result)
        return result

    def save(step: int, state, val: dict | None = None) -> None:
        metrics = {BEST_METRIC: val[BEST_METRIC]} if val is not None else None
        checkpoints.save(step, parallel.global_state(state), iterator, meta, metrics)

    _write_status(workdir, "running", start, total_steps)
    streak = 0
    last = {}
    pending = []  # (step, device metrics) not read yet: the host reads them every log_every steps
    bar = tqdm(total=total_steps, initial=start, disable=not is_main, desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    stopped_by, reached = None, start
    try:
        with _StopSignals() as signals:
            for step in range(start + 1, total_steps + 1):
                batch = parallel.put_batch(next(iterator))
                state, metrics = train_step(state, batch)
                pending.append((step, metrics))
                if step % train.log_every == 0:
                    last, streak = _account(pending, parallel, streak, train, writer, bar)
                    pending = []
                bar.update(1)
                val = None
                if val_cases and (step % train.eval_every == 0 or step == total_steps):
                    val = run_validation(step, state)
                    if meta["best_global_dice"] is None or val[BEST_METRIC] > meta["best_global_dice"]:
                        meta = {"best_global_dice": val[BEST_METRIC], "best_step": step}
                        _export(workdir, BEST_MODEL, config, parallel.host_state(state).variables)
                    bar.set_postfix(loss=last.get("loss"), val_dice=val[BEST_METRIC])
                stop = signals.should_stop()
                if val is not None or stop or step % train.checkpoint_every == 0 or step == total_steps:
                    save(step, state, val)
                reached = step
                if stop:
                    stopped_by = signals.received or "a signal on another process"
                    break
            if pending:
                last, streak = _account(pending, parallel, streak, train, writer, bar)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    _export(workdir, LAST_MODEL, config, parallel.host_state(state).variables)
    _write_status(workdir, "finished" if reached >= total_steps else "stopped", reached, total_steps, stopped_by)
    elapsed = time.perf_counter() - started
    if is_main:
        if stopped_by:
            log.warning("stopped by %s; checkpoint saved in %s, rerun the same command to resume", stopped_by, workdir)
        log.info("done: %s (%.1f s)", last, elapsed)
    return {**last, "stopped_by": stopped_by, "best_global_dice": meta["best_global_dice"], "seconds": elapsed}


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
