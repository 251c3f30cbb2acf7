"""Name -> model builder and name -> fusion block: plain dicts filled by decorators, or an import path.

Adding a model or a fusion block is one decorated definition; `create` and
the multi-scale-fusion models look names up here. A name with a colon,
``package.module:Name``, is an import path instead: the class is imported
from there, so a block (or model) in a user's own module needs no edit of
this package, and a saved model that records the path rebuilds in any
fresh process that can import it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Mapping

import flax.linen as nn

from paresseg_jax.errors import PareSegError
from paresseg_jax.models.fusion_block import FusionBlock

MODELS: dict[str, functools.partial] = {}
FUSION_BLOCKS: dict[str, type[FusionBlock]] = {}


def register_model(name: str, **defaults):
    """Registers a model class under `name`; `defaults` are the options that
    make this name differ from the class's own defaults (so one class can
    serve several names: `resseg` and `dmp_resseg`). `MODELS[name](**options)`
    builds the module."""

    def add(model_class):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = functools.partial(model_class, **defaults)
        return model_class

    return add


def register_fusion_block(name: str):
    """Registers a fusion block class (a `FusionBlock` subclass) under `name`."""

    def add(block: type[FusionBlock]) -> type[FusionBlock]:
        if not (isinstance(block, type) and issubclass(block, FusionBlock)):
            raise TypeError(f"fusion block {name!r}: {block!r} is not a subclass of paresseg_jax.models.FusionBlock")
        if name in FUSION_BLOCKS:
            raise ValueError(f"fusion block {name!r} is already registered")
        FUSION_BLOCKS[name] = block
        return block

    return add


def is_import_path(name) -> bool:
    """``package.module:Name`` rather than a registered name (or a class)."""
    return isinstance(name, str) and ":" in name


def class_path(cls: type) -> str:
    """The import path ``package.module:QualName`` that names `cls`, as a saved model records a block
    passed as a class; `portability_problem` says when another process could not import it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def portability_problem(path: str) -> str | None:
    """Why a fresh process (another command) could not import `path`, with the fix; None when it can try."""
    module_name, _, attribute = path.partition(":")
    if module_name in ("__main__", "__mp_main__") or "<locals>" in attribute:
        name = attribute.rsplit(".", 1)[-1]
        return (f"{path!r} is defined in a notebook, a script or a function, which other commands cannot import; "
                f"move the class into a module file (e.g. my_blocks.py), put its folder on PYTHONPATH (or install "
                f"its package) and name it 'my_blocks:{name}' (in model.json, or pass the class from there)")
    return None


def recorded_spec(spec: Mapping[str, Any]) -> dict:
    """`spec` as JSON records it: a model or fusion block given as a class becomes its `class_path`."""
    return {k: class_path(v) if k in ("name", "fusion") and isinstance(v, type) else v for k, v in spec.items()}


def import_path(path: str, what: str):
    """The object that ``package.module:Name`` names; `what` ('fusion', 'model') words the errors.

    Failures are the user's to fix (a package not on the import path, a misspelt name): PareSegError.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PareSegError(f"{what}={path!r}: cannot import {module_name!r} ({error})",
                           fix="put the folder holding the package on the import path (PYTHONPATH) or install it") from None
    try:
        return functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        problem = portability_problem(path)
        if problem is not None:
            raise PareSegError(f"{what}={problem}") from None
        raise PareSegError(f"{what}={path!r}: module {module_name!r} has no {attribute!r}",
                           path=getattr(module, "__file__", None), fix="name a class the module defines") from None


def fusion_block(name) -> type[FusionBlock]:
    """The block class of a registered name or of an import path, or the `FusionBlock` subclass itself."""
    if isinstance(name, type) or is_import_path(name):
        block = name if isinstance(name, type) else import_path(name, "fusion")
        if not (isinstance(block, type) and issubclass(block, FusionBlock)):
            raise PareSegError(f"fusion={name!r} is not a subclass of paresseg_jax.models.FusionBlock",
                               fix="derive the block from FusionBlock (its call: models.FusionCall)")
        return block
    try:
        return FUSION_BLOCKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"fusion={name!r} is not a registered fusion block; registered: {sorted(FUSION_BLOCKS)}, "
                         f"or give an import path package.module:ClassName") from None


def model_builder(name: str) -> functools.partial:
    """``MODELS[name]``, or the Linen module class (or partial of one) that an import path names."""
    if not is_import_path(name):
        try:
            return MODELS[name]
        except KeyError:
            raise ValueError(f"model {name!r} is unknown; registered models: {sorted(MODELS)}, "
                             f"or give an import path package.module:ClassName") from None
    builder = import_path(name, "model")
    if not isinstance(builder, functools.partial):
        builder = functools.partial(builder)
    if not (isinstance(builder.func, type) and issubclass(builder.func, nn.Module)):
        raise PareSegError(f"model {name!r} is not a flax.linen.Module class",
                           fix="name a model class (models.base.SegmentationModel has the options every model takes)")
    return builder
