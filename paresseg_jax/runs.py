"""What a training run is set up from, shared by training, scoring and the benchmarks.

The configured model, the preprocessed cache, the patient-level split into
train / validation / test cases, the run's ``split.json``, its length in steps
and its initial weights. Scoring and the benchmarks read a run's cache and
split through these functions, so they see exactly the cases training saw
without importing the training loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from paresseg_jax import model_io, models
from paresseg_jax.atomic import write_text
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.data import splits
from paresseg_jax.errors import PareSegError
from paresseg_jax.workdir import CHECKPOINT_CHOICES, SPLIT_FILE, read_split


def model_spec(config) -> dict:
    """The model part of ``config`` as a dict (``name`` and the model options): what a saved model records."""
    return config.model.to_dict()


def build_model(config, bn_axis_name: str | None = None):
    """The configured model; ``bn_axis_name`` only for pmap training (not part of the saved spec)."""
    spec = model_spec(config)
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


def write_split(workdir: Path, config, cases: dict[str, list]) -> None:
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
    from paresseg_jax.data.pipeline import LiverSliceSource  # here: scoring, which imports this module, needs no Grain

    source = LiverSliceSource(
        train_cases,
        tumor_free_fraction=config.data.tumor_free_fraction,
        seed=config.seed,
        target=config.data.target,
    )
    records = len(source)
    return int(train.num_epochs) * max(1, math.ceil(records / train.batch_size))


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
            f"model {model_spec(config)}; make config.model match it (name, width, in_channels, num_classes, "
            "attention, fusion, phases)"
        )
    return variables
