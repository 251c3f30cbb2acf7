"""Models and fusion blocks by registered name or by import path; dtype by name or as a jnp dtype."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paresseg_jax import model_io, models
from paresseg_jax.errors import PareSegError
from paresseg_jax.models import fusion, registry


def _param_shapes(module):
    return jax.tree_util.tree_map(lambda x: x.shape, models.variable_shapes(module))


def test_an_import_path_builds_what_the_registered_name_builds():
    by_name = models.create("msf_resseg", width=4, fusion="pa")
    by_path = models.create("paresseg_jax.models.resseg:MSFResSeg", width=4, phases=("pv", "art"),
                            fusion="paresseg_jax.models.fusion:PhaseAttentionBlock")
    assert registry.fusion_block(by_path.fusion) is registry.fusion_block("pa") is fusion.PhaseAttentionBlock
    assert _param_shapes(by_path) == _param_shapes(by_name)


@pytest.mark.parametrize("path, problem", [
    ("no_such_package.blocks:Gate", "cannot import 'no_such_package.blocks'"),
    ("paresseg_jax.models.fusion:NoSuchBlock", "has no 'NoSuchBlock'"),
    ("paresseg_jax.models.fusion:fuse_scales", "not a subclass of paresseg_jax.models.FusionBlock"),
    ("paresseg_jax.models.layers:ConvBNReLU", "not a subclass of paresseg_jax.models.FusionBlock"),
])
def test_a_fusion_import_path_that_does_not_name_a_block_is_refused(path, problem):
    with pytest.raises(PareSegError, match=problem):
        models.create("msf_resseg", width=4, fusion=path)


def test_a_model_import_path_must_name_a_linen_module():
    with pytest.raises(PareSegError, match="not a flax.linen.Module class"):
        models.create("paresseg_jax.models:create")
    with pytest.raises(ValueError, match="is unknown; registered models"):
        models.create("paresseg2")


def test_only_fusion_block_subclasses_register():
    class NotABlock(nn.Module):
        pass

    with pytest.raises(TypeError, match="not a subclass"):
        models.register_fusion_block("not_a_block")(NotABlock)
    assert "not_a_block" not in models.FUSION_BLOCKS


@pytest.mark.parametrize("dtype, expected", [(jnp.bfloat16, jnp.bfloat16), ("bfloat16", jnp.bfloat16),
                                             (jnp.float32, jnp.float32), (np.float32, jnp.float32)])
def test_dtype_by_name_or_as_a_jnp_dtype(dtype, expected):
    assert models.create("resseg", width=4, dtype=dtype).dtype == expected


def test_unsupported_dtypes_are_named():
    with pytest.raises(ValueError, match="unsupported"):
        models.create("resseg", width=4, dtype=jnp.int32)
    if not jax.config.jax_enable_x64:
        with pytest.raises(ValueError, match="JAX_ENABLE_X64"):
            models.create("resseg", width=4, dtype=jnp.float64)


def test_saved_model_keeps_the_import_path_and_names_the_dtype(tmp_path):
    spec = {"name": "msf_resseg", "width": 4, "fusion": "paresseg_jax.models.fusion:ConcatBlock", "dtype": jnp.bfloat16}
    module = models.create(**spec)
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), models.variable_shapes(module))
    model_io.save_model(tmp_path, spec, variables)
    written = json.loads((tmp_path / model_io.SPEC_FILE).read_text())
    assert written["fusion"] == spec["fusion"] and written["dtype"] == "bfloat16"
    loaded, _, _ = model_io.load_model(tmp_path)
    assert loaded.fusion == spec["fusion"] and loaded.dtype == jnp.bfloat16
