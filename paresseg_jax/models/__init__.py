"""The model zoo: PA-ResSeg, its ablations and the paper's baselines.

`create(name, **options)` builds a registered model (see `MODELS`);
`init_variables(module, rng)` gives its `{'params', 'batch_stats'}`,
`variable_shapes(module)` their shapes and dtypes without computing them.
A model is called as `module.apply(variables, *inputs, train=...)` with one
NHWC input per phase in the order of `module.phases` (PV first); in train
mode pass `mutable=['batch_stats']`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from paresseg_jax.models import fusion, mc_fcn, resseg, spatial_attention, unet  # noqa: F401  (fill the registries)
from paresseg_jax.models.attention import check_attention
from paresseg_jax.models.fusion_block import FusionBlock, FusionCall
from paresseg_jax.models.registry import (FUSION_BLOCKS, MODELS, fusion_block, model_builder, register_fusion_block,
                                          register_model)

__all__ = ["create", "init_variables", "variable_shapes", "dtype_name", "MODELS", "FUSION_BLOCKS", "FusionBlock",
           "FusionCall", "register_model", "register_fusion_block", "DTYPES"]

# XLA options for functions run once, where compile time dominates.
UNOPTIMIZED = {"xla_backend_optimization_level": 0}

# float64 (needs JAX_ENABLE_X64=1) is for numerical cross-checks against the PyTorch reference.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def dtype_name(dtype) -> str:
    """The name in `DTYPES` of a dtype given by name or as a jnp/numpy dtype (`jnp.bfloat16`, Flax's convention)."""
    try:
        name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unsupported; use one of {sorted(DTYPES)} or its jnp dtype")
    return name


def create(name: str, **options):
    """Builds model `name` with `options` (width, num_classes, in_channels,
    attention, precise_attention, fusion, dtype, phases, bn_axis_name); unset options take the
    name's defaults (e.g. `paresseg`: fusion 'pa', phases ('pv', 'art')).

    `name` and `fusion` are registered names or import paths
    (``my_package.blocks:MyBlock``); `dtype` a name or a jnp dtype."""
    builder = model_builder(name)
    allowed = {f.name for f in dataclasses.fields(builder.func)} - {"parent", "name"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; its options are {sorted(allowed)}")
    options = {**builder.keywords, **options}
    if "dtype" in options:
        dtype = dtype_name(options["dtype"])
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 before importing jax")
        options["dtype"] = DTYPES[dtype]
    if "phases" in options:
        phases = tuple(options["phases"])
        if not phases or phases[0] != "pv" or len(set(phases)) != len(phases):
            raise ValueError(f"phases={phases!r}: give distinct phase names with 'pv' first (PV is the target)")
        options["phases"] = phases
    check_attention(options.get("attention", "reference"))
    if options.get("fusion") is not None:
        fusion_block(options["fusion"])
    for key in ("width", "num_classes", "in_channels"):
        if key in options and (not isinstance(options[key], int) or options[key] < 1):
            raise ValueError(f"{key}={options[key]!r} must be a positive integer")
    return builder(**options)


def init_variables(module, rng, height: int = 32, width: int = 32, batch: int = 1) -> dict:
    """Fresh `{'params', 'batch_stats'}` of `module` (BN statistics: mean 0, var 1).

    Compiled without backend optimisation: it runs once per seed, and XLA's CPU
    backend otherwise spends most of a minute optimising the per-parameter
    random number generation. The compiled initialiser is kept per model and
    input size, so a cross-validation's or an ablation's folds compile it once.
    Under a caller's tracing (jit, eval_shape) it is simply traced.
    """
    if isinstance(rng, jax.core.Tracer):
        return _init_function(module, height, width, batch)(rng)
    return cached_for(module, _compiled_init)(module, height, width, batch)(rng)


def variable_shapes(module) -> dict:
    """`init_variables`' tree as `jax.ShapeDtypeStruct`s, traced only: a template for restoring or checking
    saved weights, where initialising would compile the model for nothing. Traced once per model (loading a
    model checks and restores with it; an ensemble's members share it)."""
    shapes = cached_for(module, _traced_shapes)(module, bool(jax.config.jax_enable_x64))
    return jax.tree.map(lambda leaf: leaf, shapes)  # a fresh tree: the cached one stays


def _init_function(module, height: int, width: int, batch: int):
    def init(key):
        inputs = [jnp.zeros((batch, height, width, module.in_channels), jnp.float32) for _ in module.phases]
        return module.init(key, *inputs, train=False)

    return init


def cached_for(module, cached):
    """``cached`` (an ``lru_cache``'d function keyed on ``module``), or the function it wraps where ``module``
    cannot be a key (a field of the user's that is a list or a dict)."""
    try:
        hash(module)
    except TypeError:
        return cached.__wrapped__
    return cached


@functools.lru_cache(maxsize=16)
def _compiled_init(module, height: int, width: int, batch: int):
    return jax.jit(_init_function(module, height, width, batch), compiler_options=UNOPTIMIZED)


@functools.lru_cache(maxsize=32)
def _traced_shapes(module, x64: bool) -> dict:  # x64: float64 leaves when enabled, so it is part of the key
    return jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
