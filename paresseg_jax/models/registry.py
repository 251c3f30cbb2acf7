"""Name -> model builder and name -> fusion block: plain dicts filled by decorators.

Adding a model or a fusion block is one decorated definition; `create` and
the multi-scale-fusion models look names up here, nothing is imported by
string.
"""

import functools
from typing import Callable, Dict

MODELS: Dict[str, Callable] = {}
FUSION_BLOCKS: Dict[str, type] = {}


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

    def add(block):
        if name in FUSION_BLOCKS:
            raise ValueError(f"fusion block {name!r} is already registered")
        FUSION_BLOCKS[name] = block
        return block

    return add


def fusion_block(name: str) -> type:
    try:
        return FUSION_BLOCKS[name]
    except KeyError:
        raise ValueError(f"fusion={name!r} is not a registered fusion block; "
                         f"registered: {sorted(FUSION_BLOCKS)}") from None
