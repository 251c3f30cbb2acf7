"""A training workdir given as a model resolves to the export its config.eval.checkpoint names, as evaluation scores it."""

import json

import pytest

from paresseg_jax import model_io
from paresseg_jax.workdir import BEST_MODEL, CONFIG_FILE, LAST_MODEL


@pytest.mark.parametrize("checkpoint, expected", [("last", LAST_MODEL), ("best", BEST_MODEL), (None, LAST_MODEL)])
def test_a_workdir_resolves_to_the_checkpoint_its_config_chose(tmp_path, checkpoint, expected):
    for name in (BEST_MODEL, LAST_MODEL):
        (tmp_path / name).mkdir()
        (tmp_path / name / model_io.SPEC_FILE).write_text(json.dumps({"name": "resseg"}))
    config = {"eval": {} if checkpoint is None else {"checkpoint": checkpoint}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    assert model_io.resolve_model_dir(tmp_path) == tmp_path / expected


def test_a_run_still_training_resolves_to_what_it_has_exported(tmp_path):
    (tmp_path / BEST_MODEL).mkdir()
    (tmp_path / BEST_MODEL / model_io.SPEC_FILE).write_text(json.dumps({"name": "resseg"}))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"eval": {"checkpoint": "last"}}))
    assert model_io.resolve_model_dir(tmp_path) == tmp_path / BEST_MODEL
