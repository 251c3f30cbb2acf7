"""The cascade's cheaper liver stage: the slice range on hand-made cases, the full stage's mask on the slices it
computes, the reduced resolution, and evaluation passing the same settings as paresseg-predict."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paresseg_jax import models
from paresseg_jax.data import cache
from paresseg_jax.evaluate import scoring
from paresseg_jax.infer import liver_stage, study
from paresseg_jax.infer.ensemble import Ensemble
from paresseg_jax.infer.predict import binarize, predict_volume

from test_evaluate_crossval import _tiny_cache


class StackLiver(nn.Module):
    """Liver where the 2.5D stack's mean exceeds 0.5: a slice's answer depends on its neighbours."""

    phases: tuple = ("pv",)
    in_channels: int = 3

    @nn.compact
    def __call__(self, pv, train=False):
        score = 40.0 * (pv.mean(axis=-1, keepdims=True) - 0.5)
        return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)


class Recorded(Ensemble):
    """An ensemble that notes which slices each pass computed and the PV shape it saw."""

    def probability(self, images, roi=None, progress=None, **options):
        self.calls.append((tuple(options["slices"]), images["pv"].shape))
        return super().probability(images, roi, progress, **options)


def _recorded(module):
    model = Recorded(((module, {}),))
    object.__setattr__(model, "calls", [])
    return model


@pytest.mark.parametrize("found, expected", [
    ([1, 0, 0, 0, 0, 0], range(0, 4)),  # liver at the first slice: from the volume's start to the next sample
    ([0, 0, 0, 0, 0, 1], range(17, 20)),  # at the last slice (sampled though not a multiple of 4)
    ([0, 0, 0, 0, 0, 0], []),  # no liver at all
    ([0, 1, 0, 0, 1, 0], [*range(1, 8), *range(13, 19)]),  # two separate blocks
    ([0, 1, 1, 0, 0, 0], range(1, 12)),  # one block over two samples
])
def test_slices_in_range_on_hand_made_cases(found, expected):
    sampled = liver_stage.sampled_slices(20, 4)
    np.testing.assert_array_equal(sampled, [0, 4, 8, 12, 16, 19])
    in_range = liver_stage.slices_in_range(20, sampled, np.array(found, bool))
    np.testing.assert_array_equal(in_range, list(expected))


def test_sampled_slices_at_the_volume_ends_and_a_bad_step():
    np.testing.assert_array_equal(liver_stage.sampled_slices(5, 8), [0, 4])
    np.testing.assert_array_equal(liver_stage.sampled_slices(1, 4), [0])
    np.testing.assert_array_equal(liver_stage.sampled_slices(6, 1), range(6))
    with pytest.raises(ValueError, match="liver_slice_step"):
        liver_stage.sampled_slices(6, 0)


def test_predict_volume_computes_only_the_slices_asked_with_their_whole_stacks():
    module = models.create("resseg", width=4, phases=("pv",))
    variables = models.init_variables(module, jax.random.key(0))
    pv = np.random.default_rng(0).uniform(size=(9, 32, 32)).astype(np.float32)
    full = predict_volume(module, variables, {"pv": pv}, batch_size=4)
    some = predict_volume(module, variables, {"pv": pv}, batch_size=4, slices=[8, 0, 3])
    np.testing.assert_allclose(some[[0, 3, 8]], full[[0, 3, 8]], atol=1e-6)
    assert not some[[1, 2, 4, 5, 6, 7]].any()
    with pytest.raises(ValueError, match="outside the volume"):
        predict_volume(module, variables, {"pv": pv}, slices=[9])


def _two_livers():
    """40 slices: a liver on 10..17, one on 30..39 (the last slice), a 2-slice one on 21..22 between samples."""
    pv = np.full((40, 16, 16), 0.2, np.float32)
    for low, high in ((10, 18), (30, 40), (21, 23)):
        pv[low:high, 4:12, 3:10] = 0.9
    return pv


def test_coarse_stage_equals_the_full_one_on_the_slices_it_computes_and_skips_the_rest():
    pv = _two_livers()
    full = binarize(predict_volume(StackLiver(), {}, {"pv": pv}), 0.5)
    model = _recorded(StackLiver())
    cheap = liver_stage.liver_mask(model, pv, 0.5, liver_slice_step=4)
    sampled = list(range(0, 40, 4)) + [39]
    rest = sorted({*range(9, 20), *range(29, 40)} - set(sampled))  # between the liver-free samples 8|20, 28|end
    assert [call[0] for call in model.calls] == [tuple(sampled), tuple(rest)]
    computed = sorted({*sampled, *rest})
    np.testing.assert_array_equal(cheap[computed], full[computed])
    assert not cheap[sorted(set(range(40)) - set(computed))].any()
    # The 2-slice liver between the liver-free samples 20 and 24 is the one part missed (module docstring).
    assert full[21:23].any() and not (cheap != full)[np.r_[0:21, 23:40]].any()
    np.testing.assert_array_equal(liver_stage.liver_mask(_recorded(StackLiver()), pv, 0.5), full)  # step 1


def test_reduced_resolution_shows_the_model_a_shrunk_pv_and_answers_at_full_size():
    pv = np.full((6, 50, 61), 0.2, np.float32)
    pv[1:5, 10:40, 12:50] = 0.9
    model = _recorded(StackLiver())
    mask = liver_stage.liver_mask(model, pv, 0.5, liver_scale=2)
    assert mask.shape == pv.shape and model.calls[0][1] == (6, 25, 31)
    truth = pv > 0.5  # each liver slice's stack holds two liver slices of three
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.95
    with pytest.raises(ValueError, match="liver_scale"):
        liver_stage.liver_mask(model, pv, 0.5, liver_scale=0)


def test_evaluation_runs_the_liver_stage_with_the_settings_paresseg_predict_uses(tmp_path, monkeypatch):
    settings = {"liver_slice_step": 3, "liver_scale": 2, "liver_threshold": 0.4, "batch_size": 2}
    stand_in = (StackLiver(), {})
    predicted = study.Segmenter.load(stand_in, stand_in, eval_config=settings).options
    scored = {}

    def capture(images, tumor_model, **options):
        scored.update(options)
        raise KeyboardInterrupt  # the options are all this test needs

    monkeypatch.setattr(scoring, "segment_study", capture)
    with pytest.raises(KeyboardInterrupt):
        scoring.score_cases(stand_in, cache.open_cohort(_tiny_cache(tmp_path)), settings, liver_model=stand_in)
    assert {k: scored[k] for k in predicted} == predicted
    assert predicted["liver_slice_step"] == 3 and predicted["liver_scale"] == 2
