"""paresseg-train: train one experiment; rerun the same command to resume.

    paresseg-train --config=paresseg --workdir=runs/paresseg \\
        --config.data.cohort_dir=data/cohort --config.train.parallel=jit

Any config field can be overridden as ``--config.<section>.<field>=value``.
Multi-process runs (several hosts, or one process per GPU) start one copy per
process; under Slurm nothing else is needed, otherwise give
--coordinator_address, --num_processes and --process_id. Library INFO logs
(orbax, grain) are hidden unless --verbosity=0 is given.
"""

import logging

from absl import app, flags

from paresseg_jax import cli, preflight

_CONFIG = cli.define_config_flag(
    "Experiment config: a built-in name (paresseg, resseg, ...; smoke is tiny) or a config file's path, e.g. "
    "configs/paresseg.py (one per experiment of the paper). Override fields with --config.<section>.<field>=value, "
    "e.g. --config.train.num_steps=1000.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Folder for checkpoints, metrics.jsonl, TensorBoard events, config.json, split.json (train/validation/test "
    "case ids) and the exported last_model/ and best_model/ (when there is validation). "
    "If it holds checkpoints, training resumes from the latest complete one.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process only: host:port of process 0 (jax.distributed). Leave unset on one process or under Slurm.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process only: total number of processes (with --coordinator_address)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process only: this process's index, 0..num_processes-1 (with --coordinator_address)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --flag=value (see --help)")
    preflight.training(_CONFIG.value, _WORKDIR.value)
    from paresseg_jax.train import distributed

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax

    logging.getLogger("paresseg_jax").setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)

    from paresseg_jax.train import train_and_evaluate

    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        stopped = f"stopped by {result['stopped_by']}; rerun to resume" if result["stopped_by"] else "finished"
        best = result["best_global_dice"]
        validated = "no validation cases" if best is None else f"best validation global Dice {best}"
        print(f"{stopped}: {validated}, workdir {_WORKDIR.value}")


def run():
    cli.run_app(main)


if __name__ == "__main__":
    run()
