"""The README's "add your own fusion block" example, kept working by this test.

A spatial inter-phase attention (the paper's stated future work): each
other phase is gated pixel by pixel by a sigmoid map computed from PV and
that phase, then concatenated with PV. One class, one registry line
(the decorator), one config line (`config.model.fusion = "spatial_pa"`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax import config_files, models
from paresseg_jax.models.layers import Conv


@models.register_fusion_block("spatial_pa")
class SpatialPhaseAttention(models.FusionBlock):
    """Gates each other phase by sigmoid(conv3x3([PV, phase])), a per-pixel map."""

    @nn.compact
    def __call__(self, pv, others, train):
        fused = [pv]
        for k, other in enumerate(others):
            gate = nn.sigmoid(Conv(1, 3, dtype=self.dtype, name=f"gate{k}")(jnp.concatenate([pv, other], axis=-1)))
            fused.append(gate * other)
        return jnp.concatenate(fused, axis=-1)


def test_spatial_block_gates_the_other_phase_per_pixel():
    rng = np.random.default_rng(0)
    pv, art = (rng.standard_normal((1, 4, 5, 8)).astype(np.float32) for _ in range(2))
    block = models.FUSION_BLOCKS["spatial_pa"]()
    variables = block.init(jax.random.key(0), pv, [art], train=False)
    zero_gate = jax.tree_util.tree_map(jnp.zeros_like, variables)  # sigmoid(0) = 1/2 everywhere
    np.testing.assert_allclose(block.apply(zero_gate, pv, [art], train=False),
                               np.concatenate([pv, 0.5 * art], axis=-1), rtol=1e-6)


def test_a_config_line_puts_the_block_into_the_msf_model():
    config = config_files.load("msf_resseg")
    config.model.fusion = "spatial_pa"  # the one config line
    config.model.width = 4
    module = models.create(**config.model.to_dict())
    inputs = [jax.ShapeDtypeStruct((1, 40, 48, 3), jnp.float32)] * 2
    logits, variables = jax.eval_shape(lambda *x: module.init_with_output(jax.random.key(0), *x, train=False),
                                       *inputs)
    assert logits.shape == (1, 40, 48, 2)
    assert variables["params"]["cf1"]["gate0"]["kernel"].shape == (3, 3, 8, 1)
