"""The cascade's liver stage, full and cheaper: liver Dice and cost on a trained run's test cases.

``paresseg-bench liver --run=WORKDIR --liver_workdir=LIVER --settings=1x1,4x1,1x2,4x2 [--json=out.json]``
runs the liver run's model on the tumor run's test cases (its ``split.json``)
as the cascade does (``paresseg_jax.infer.liver_stage``), once per setting
``STEPxSCALE`` (``config.eval.liver_slice_step`` x ``liver_scale``; 1x1, the
full stage, always first), with the tumor run's other ``config.eval``
settings. Prints per setting the mean liver Dice against the ground truth,
its change from the full stage's, the FLOPs of the forward passes (XLA's
count) and the liver stage's seconds (compilation apart) as fractions of the
full stage's.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from absl import app, flags

from paresseg_jax import atomic, stage_times
from paresseg_jax.data import cache as cache_lib
from paresseg_jax.evaluate.scoring import load_run_model, run_split
from paresseg_jax.infer.cascade import predict_options, threshold_for
from paresseg_jax.infer.ensemble import as_ensemble
from paresseg_jax.infer.liver_stage import liver_mask
from paresseg_jax.metrics import dice
from paresseg_jax.runs import prepared_cache
from paresseg_jax.workdir import read_config

FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), so importing the module for its
    functions defines none (another module's --run or --json would clash)."""
    flags.DEFINE_string("run", None, "a paresseg-train workdir (tumor target): its test cases and eval settings",
                        required=True)
    flags.DEFINE_string("liver_workdir", None, "the liver-ResSeg run of the cascade", required=True)
    flags.DEFINE_list("settings", ["1x1", "2x1", "4x1", "1x2", "2x2", "4x2"],
                      "liver_slice_step x liver_scale pairs to measure (1x1 is always measured, first)")
    flags.DEFINE_string("json", None, "also write the results here")


def parse_settings(texts) -> list[tuple[int, int]]:
    """``STEPxSCALE`` texts as ``(step, scale)`` pairs, the full stage (1, 1) first, each once."""
    pairs = [(1, 1)]
    for text in texts:
        step, sep, scale = text.strip().partition("x")
        if not sep or not step.isdigit() or not scale.isdigit():
            raise ValueError(f"setting {text!r}: write STEPxSCALE, e.g. 4x2")
        pairs.append((int(step), int(scale)))
    return list(dict.fromkeys(pairs))


def measure(run, liver_workdir, settings: list[tuple[int, int]]) -> dict:
    """Per setting and case: liver Dice, forward FLOPs and liver-stage seconds (compilation apart)."""
    eval_config = ml_collections.ConfigDict(read_config(run)).eval.to_dict()
    liver = as_ensemble(load_run_model(liver_workdir, read_config(liver_workdir)["eval"]["checkpoint"]))
    options = predict_options(eval_config)
    cases = cache_lib.open_cohort(prepared_cache(ml_collections.ConfigDict(read_config(run))), run_split(run)["test"])
    rows = []
    for step, scale in settings:
        for case in cases:
            pv = np.asarray(case.image("pv"))
            with stage_times.recording() as times, stage_times.stage("liver"):
                mask = liver_mask(liver, pv, threshold_for(eval_config, "liver"), liver_slice_step=step,
                                  liver_scale=scale, **options)
            record = times.record()
            rows.append({"step": step, "scale": scale, "case": case.case_id, "dice": dice(mask, case.liver),
                         "gflop": record["forward_flops"] / 1e9, "seconds": record["seconds"]["liver"]})
    return {"run": str(run), "liver_workdir": str(liver_workdir), "rows": rows}


def summary(rows: list[dict]) -> list[dict]:
    """Per setting: mean Dice, its change from the full stage's, and FLOPs and seconds as fractions of its."""
    settings = list(dict.fromkeys((r["step"], r["scale"]) for r in rows))
    totals = {s: {k: sum(r[k] for r in rows if (r["step"], r["scale"]) == s) for k in ("gflop", "seconds")}
              for s in settings}
    dices = {s: [r["dice"] for r in rows if (r["step"], r["scale"]) == s] for s in settings}
    full = settings[0]
    return [{"step": s[0], "scale": s[1], "cases": len(dices[s]), "dice": float(np.mean(dices[s])),
             "min_dice": float(np.min(dices[s])), "dice_change": float(np.mean(dices[s]) - np.mean(dices[full])),
             "flop_fraction": totals[s]["gflop"] / totals[full]["gflop"],
             "time_fraction": totals[s]["seconds"] / totals[full]["seconds"]} for s in settings]


def main(argv):
    del argv
    result = measure(FLAGS.run, FLAGS.liver_workdir, parse_settings(FLAGS.settings))
    result["summary"] = summary(result["rows"])
    print(f"liver stage on {result['run']}'s test cases (liver model {result['liver_workdir']})")
    print(f"{'step x scale':<14}{'cases':>6}{'Dice':>8}{'min':>8}{'change':>8}{'FLOPs':>8}{'time':>8}")
    for s in result["summary"]:
        print(f"{s['step']:>6d} x {s['scale']:<5d}{s['cases']:>6d}{100 * s['dice']:>8.2f}{100 * s['min_dice']:>8.2f}"
              f"{100 * s['dice_change']:>+8.2f}{s['flop_fraction']:>8.3f}{s['time_fraction']:>8.3f}")
    if FLAGS.json:
        atomic.write_text(FLAGS.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
