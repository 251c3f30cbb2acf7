"""Saved models for inference: a folder with ``model.json`` (the ``create``
arguments) and ``variables/`` (an orbax checkpoint of params and batch_stats).

Training exports this format (``<workdir>/best_model``), the PyTorch converter
writes it, and inference reads it, so any of them can feed any other.
jax and orbax are imported on use: finding a model's folder
(`resolve_model_dir`) is one of the checks a launcher makes before any work.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from paresseg_jax import absent_phases
from paresseg_jax.atomic import atomic_path, write_text
from paresseg_jax.errors import BadInputError, MissingInputError, error_line, read_json
from paresseg_jax.workdir import CHECKPOINT_CHOICES, EXPORTED_MODELS, LAST_MODEL, read_config

log = logging.getLogger(__name__)

SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"
FOLD_PATTERN = re.compile(r"fold_(\d+)$")  # cross-validation workdirs: paresseg_jax.experiments.crossval
# Keys of a spec that record how the model was trained, not how to build it.
TRAINING_KEYS = (absent_phases.SPEC_KEY,)


def save_model(path: str | os.PathLike, spec: Mapping[str, Any], variables: Mapping) -> Path:
    """Write ``spec`` (``{'name': ..., **create_options}``) and ``variables`` to ``path``, whole or not at all.

    Names given as import paths (``my_package.blocks:MyBlock``) are kept as such: `load_model`
    imports them again; a class is recorded as its import path (a warning says how to make one
    defined in ``__main__`` importable by other commands). A jnp dtype is written as its name.
    """
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from paresseg_jax import models

    path = Path(path).absolute()
    if "name" not in spec:
        raise ValueError(f"model spec {dict(spec)} has no 'name'")
    spec = models.registry.recorded_spec(spec)
    for key in ("name", "fusion"):
        problem = models.registry.is_import_path(spec.get(key)) and models.registry.portability_problem(spec[key])
        if problem:
            log.warning("%s records %s=%s", path / SPEC_FILE, key, problem)
    if "dtype" in spec:
        spec = {**spec, "dtype": models.dtype_name(spec["dtype"])}
    host = jax.tree_util.tree_map(np.asarray, dict(variables))
    if jax.process_count() > 1:
        # Every process calls orbax on one folder; their temporaries would have different names, so a
        # multi-process export is written in place (model.json last, so a reader never sees a spec alone).
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path / VARIABLES_DIR, host, force=True)
        if jax.process_index() == 0:
            write_text(path / SPEC_FILE, json.dumps(dict(spec), indent=1, default=list))
        return path
    with atomic_path(path, directory=True) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / VARIABLES_DIR, host)
        (tmp / SPEC_FILE).write_text(json.dumps(dict(spec), indent=1, default=list), encoding="utf-8")
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A saved-model folder itself, or the exported model inside a training workdir: the one its
    ``config.eval.checkpoint`` names ('last' unless the run chose 'best' on its validation cases), as
    evaluation scores it."""
    path = Path(path).absolute()
    if (path / SPEC_FILE).exists():
        return path
    config = read_config(path)
    chosen = LAST_MODEL if config is None else CHECKPOINT_CHOICES.get(config["eval"]["checkpoint"], LAST_MODEL)
    for name in dict.fromkeys((chosen, *EXPORTED_MODELS)):
        if (path / name / SPEC_FILE).exists():
            return path / name
    raise MissingInputError(
        f"holds no saved model ({SPEC_FILE})", path=path,
        fix="pass a folder written by paresseg-train (its workdir), paresseg-convert, or paresseg_jax.model_io.save_model")


def model_folders(source: str | os.PathLike) -> list[Path]:
    """The saved-model folders a source stands for: itself, a training workdir's export, or, for a
    cross-validation workdir, every ``fold_<k>`` one's in fold order (an ensemble)."""
    path = Path(source)
    try:
        return [resolve_model_dir(path)]
    except MissingInputError:
        folds = [p for p in path.glob("fold_*") if FOLD_PATTERN.match(p.name)] if path.is_dir() else []
        if not folds:
            raise
    return [resolve_model_dir(fold) for fold in sorted(folds, key=lambda p: int(p.name.split("_")[1]))]


def check_model(path: str | os.PathLike):
    """``(module, spec, model folder)`` of a saved model after checking, without reading weights, that the
    spec builds a model and that the stored variables have exactly that model's names and shapes.

    Launchers call it before reading any image, so a model of another width or
    architecture fails in seconds with both sides named, not after the work.
    """
    from paresseg_jax import models

    path = resolve_model_dir(path)
    spec_file = path / SPEC_FILE
    spec = read_json(spec_file, "restore it from the training workdir or convert the model again", what="model spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadInputError("model spec has no model \"name\"", path=spec_file,
                            fix='it should read {"name": "paresseg", "width": ..., ...}')
    try:
        module = models.create(spec["name"], **{k: v for k, v in spec.items() if k not in ("name", *TRAINING_KEYS)})
    except (ValueError, TypeError) as error:
        raise BadInputError(f"model spec does not build a model: {error}", path=spec_file,
                            fix="fix model.json or export the model again") from None
    stored = _stored_shapes(path / VARIABLES_DIR)
    wanted = _shapes(models.variable_shapes(module))
    if stored != wanted:
        differences = sorted(
            f"{name}: {stored.get(name, 'absent')} stored, {wanted.get(name, 'absent')} in the spec"
            for name in set(stored) | set(wanted) if stored.get(name) != wanted.get(name)
        )
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise BadInputError(
            f"the weights in {VARIABLES_DIR}/ are not those of the model {SPEC_FILE} describes ({spec}): "
            + "; ".join(differences[:3]) + more, path=path,
            fix=f"{SPEC_FILE} and {VARIABLES_DIR}/ must come from the same save; export or convert the model again")
    return module, spec, path


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    import jax

    return {"/".join(str(getattr(k, "key", k)) for k in keys): tuple(leaf.shape)
            for keys, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _stored_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    import orbax.checkpoint as ocp

    if not directory.is_dir():
        raise MissingInputError(f"saved model has no {VARIABLES_DIR}/ folder", path=directory.parent,
                                fix="export or convert the model again")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            metadata = ckptr.metadata(directory)
    except Exception as error:  # orbax raises many types for a damaged folder; all mean the same to a user
        raise BadInputError(f"cannot read the saved weights ({type(error).__name__}: {error_line(error)})",
                            path=directory, fix="export or convert the model again") from None
    shapes = _shapes(getattr(metadata, "item_metadata", metadata))
    if not shapes:
        raise BadInputError("the saved weights list no arrays (damaged files?)", path=directory,
                            fix="export or convert the model again")
    return shapes


def load_model(path: str | os.PathLike):
    """Returns ``(module, variables, spec)`` from a saved model or a training workdir (checked by `check_model`),
    or from a ``paresseg-export`` folder (an `exported.ExportedModel` standing for the module, no model code)."""
    import orbax.checkpoint as ocp

    from paresseg_jax import exported

    if exported.is_exported(path):
        return exported.load_exported(path)
    from paresseg_jax import models

    module, spec, path = check_model(path)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(path / VARIABLES_DIR, models.variable_shapes(module))
    except Exception as error:  # a damaged array file: the metadata read, the values did not
        raise BadInputError(f"cannot read the saved weights ({type(error).__name__}: {error_line(error)})",
                            path=path / VARIABLES_DIR, fix="export or convert the model again") from None
    return module, variables, spec
