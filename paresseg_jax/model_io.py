"""Saved models for inference: a folder with ``model.json`` (the ``create``
arguments) and ``variables/`` (an orbax checkpoint of params and batch_stats).

Training exports this format (``<workdir>/best_model``), the PyTorch converter
writes it, and inference reads it, so any of them can feed any other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from paresseg_jax.workdir import EXPORTED_MODELS

SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"


def save_model(path: str | os.PathLike, spec: Mapping[str, Any], variables: Mapping) -> Path:
    """Write ``spec`` (``{'name': ..., **create_options}``) and ``variables`` to ``path``.

    Names given as import paths (``my_package.blocks:MyBlock``) are kept as such: `load_model`
    imports them again. A jnp dtype is written as its name.
    """
    from paresseg_jax import models

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    if "name" not in spec:
        raise ValueError(f"model spec {dict(spec)} has no 'name'")
    if "dtype" in spec:
        spec = {**spec, "dtype": models.dtype_name(spec["dtype"])}
    host = jax.tree_util.tree_map(np.asarray, dict(variables))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / VARIABLES_DIR, host, force=True)
    (path / SPEC_FILE).write_text(json.dumps(dict(spec), indent=1, default=list))
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A saved-model folder itself, or the exported model inside a training workdir."""
    path = Path(path).absolute()
    if (path / SPEC_FILE).exists():
        return path
    for name in EXPORTED_MODELS:
        if (path / name / SPEC_FILE).exists():
            return path / name
    raise FileNotFoundError(
        f"{path} holds no saved model ({SPEC_FILE}); pass a folder written by paresseg-train "
        f"(its workdir), paresseg-convert, or paresseg_jax.model_io.save_model"
    )


def load_model(path: str | os.PathLike):
    """Returns ``(module, variables, spec)`` from a saved model or a training workdir."""
    from paresseg_jax import models

    path = resolve_model_dir(path)
    spec = json.loads((path / SPEC_FILE).read_text())
    options = {k: v for k, v in spec.items() if k != "name"}
    module = models.create(spec["name"], **options)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / VARIABLES_DIR, models.variable_shapes(module))
    return module, variables, spec
