"""Phase dropout: training patches without a phase, the saved record of it, and who may run without ART."""

import json

import numpy as np
import pytest

from paresseg_jax import absent_phases, model_io
from paresseg_jax.data import cache, pipeline
from paresseg_jax.errors import PareSegError
from paresseg_jax.train import loop
from paresseg_jax.workdir import LAST_MODEL
from test_train_support import tiny_config, write_tiny_cache

PHASES = ("pv", "art", "nc", "dl")


def _case(tmp_path):
    shape = (3, 24, 24)
    rng = np.random.default_rng(0)
    images = {p: (0.1 + 0.8 * rng.random(shape)).astype(np.float32) for p in PHASES}
    liver = np.ones(shape, np.uint8)
    return cache.store_case(tmp_path, "d", images, liver, liver * 0, liver, np.ones(shape, np.float32), {})


def test_each_non_pv_phase_is_dropped_independently_with_the_given_probability(tmp_path):
    record = {"case": _case(tmp_path), "z": 1}
    keep_all = pipeline.PairedPatch(PHASES, 3, crop_size=16)
    dropping = pipeline.PairedPatch(PHASES, 3, crop_size=16, phase_dropout=0.4)
    dropped = {p: [] for p in PHASES}
    for seed in range(300):
        plain = keep_all.random_map(record, np.random.default_rng(seed))
        patch = dropping.random_map(record, np.random.default_rng(seed))
        for key in ("label", "weight"):
            np.testing.assert_array_equal(patch[key], plain[key])
        for p in PHASES:
            gone = not patch[p].any()
            assert gone or np.array_equal(patch[p], plain[p])  # the same patch, or the absent input
            dropped[p].append(gone)
    assert not any(dropped["pv"])
    rates = {p: np.mean(dropped[p]) for p in PHASES[1:]}
    assert all(0.3 < r < 0.5 for r in rates.values()), rates  # 300 draws of p = 0.4: sd 0.028
    both = np.mean(np.logical_and(dropped["art"], dropped["nc"]))
    assert 0.1 < both < 0.23  # independent: 0.16


@pytest.mark.parametrize("probability", [0.0, 0.5])
def test_the_saved_model_records_the_phase_dropout_it_was_trained_with(tmp_path, probability):
    config = tiny_config(write_tiny_cache(tmp_path / "cache"), num_steps=2, eval_every=2, checkpoint_every=2,
                         phase_dropout=probability)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    spec = json.loads((tmp_path / "run" / LAST_MODEL / model_io.SPEC_FILE).read_text())
    assert spec[absent_phases.SPEC_KEY] == probability
    module, _, loaded = model_io.load_model(tmp_path / "run")
    assert absent_phases.trained_phase_dropout(loaded) == probability and module.phases == ("pv", "art")


def test_only_a_model_trained_with_phase_dropout_may_go_without_a_phase():
    phases = ("pv", "art", "nc")
    assert absent_phases.missing_phases({"pv", "nc"}, phases, {absent_phases.SPEC_KEY: 0.3}) == ["art"]
    assert absent_phases.missing_phases(["pv", "art", "nc"], phases, {}) == []
    for spec in ({}, {absent_phases.SPEC_KEY: 0.0}):  # a converted checkpoint's spec does not say: refused too
        with pytest.raises(PareSegError, match=r"without art, nc; give the missing image\(s\) with --art, --nc, or use a model trained"):
            absent_phases.missing_phases({"pv"}, phases, spec, model="m")
    with pytest.raises(PareSegError, match="needs its PV"):
        absent_phases.missing_phases({"art"}, phases, {absent_phases.SPEC_KEY: 0.3})
    pv = np.full((2, 4, 4), 0.5, np.float32)
    filled = absent_phases.fill_absent({"pv": pv, "nc": pv + 0.1}, phases)
    assert list(filled) == list(phases) and not filled["art"].any() and filled["art"].shape == pv.shape
    np.testing.assert_array_equal(filled["nc"], pv + 0.1)
