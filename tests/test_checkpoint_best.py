"""config.eval.checkpoint='best': best_model holds the weights of the step with the best validation Dice, and
scoring a run that chose it scores that model, not the last one."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp

from paresseg_jax import model_io
from paresseg_jax.evaluate import scoring
from paresseg_jax.train import loop
from paresseg_jax.workdir import read_metrics
from standin_models import save_standin
from test_train_support import tiny_config, write_tiny_cache

STEPS = 12


def _bits(tree):
    return [np.ascontiguousarray(np.asarray(leaf)).view(np.uint8) for leaf in jax.tree_util.tree_leaves(tree)]


def test_best_model_is_the_best_validation_step_and_scoring_uses_it(tmp_path):
    config = tiny_config(write_tiny_cache(tmp_path / "cache"), num_steps=STEPS, eval_every=2, checkpoint_every=2)
    config.eval.checkpoint = "best"
    workdir = tmp_path / "run"
    result = loop.train_and_evaluate(config, str(workdir))
    val = [(r["global_dice"], r["step"]) for r in read_metrics(workdir) if r["split"] == "val"]
    assert [step for _, step in val] == list(range(2, STEPS + 1, 2))
    best_dice, best_step = max(val, key=lambda v: (v[0], -v[1]))  # the first step that reached the best Dice
    assert result["best_global_dice"] == best_dice
    with ocp.StandardCheckpointer() as checkpointer:  # the whole state of that step, as the checkpoint stored it
        state = checkpointer.restore(workdir / "checkpoints" / str(best_step) / "state")
    best = model_io.load_model(workdir / "best_model")[1]
    stored = {"params": state["params"], "batch_stats": state["batch_stats"]}
    assert all(np.array_equal(a, b) for a, b in zip(_bits(best), _bits(stored)))
    last = model_io.load_model(workdir / "last_model")[1]
    assert best_step < STEPS and not all(np.array_equal(a, b) for a, b in zip(_bits(best), _bits(last)))

    # Scoring follows config.eval.checkpoint: a stand-in that finds the tiny cache's tumors as 'best', one that
    # finds nothing as 'last'.
    save_standin(workdir / "best_model", offset=0.2)
    save_standin(workdir / "last_model", offset=5.0)
    chosen = scoring.score_run(workdir, roi="oracle_gt_liver", out_dir=tmp_path / "best")
    assert chosen["info"]["checkpoint"] == "best" and chosen["summary"]["all"]["dpc"] > 0.9
    written = json.loads((workdir / "config.json").read_text())
    written["eval"]["checkpoint"] = "last"
    (workdir / "config.json").write_text(json.dumps(written))
    assert scoring.score_run(workdir, roi="oracle_gt_liver", out_dir=tmp_path / "last")["summary"]["all"]["dpc"] == 0.0

