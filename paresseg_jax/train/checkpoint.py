"""Crash-safe training checkpoints: train state + data iterator + bookkeeping, together.

One orbax ``CheckpointManager`` under ``<workdir>/checkpoints`` writes a
Composite of three items per step, so a restored run continues with the same
parameters, optimizer moments, RNG and the exact next training sample:

- ``state``: the ``TrainState`` as globally replicated arrays;
- ``data_iterator``: the Grain iterator position (one file per process);
- ``meta``: JSON (best validation Dice so far and its step).

Saves are asynchronous (the device-to-host copy blocks, the write does not)
and atomic: orbax writes into a ``<step>.orbax-checkpoint-tmp-*`` folder and
renames it when complete, so a run killed mid-save leaves a temporary folder
that is never listed as a step (and is removed on the next start).
Kept: the latest ``keep`` steps plus the best by validation global Dice.
A resumed run starts from the newest step that restores; a damaged one is
set aside with a warning (`Checkpoints.restore_newest_readable`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from paresseg_jax.data.pipeline import ITERATOR_ITEM, iterator_restore_args, iterator_save_args
from paresseg_jax.errors import BadInputError, error_line

log = logging.getLogger(__name__)

STATE_ITEM = "state"
META_ITEM = "meta"
BEST_METRIC = "global_dice"


class Checkpoints:
    """Save and restore (state, iterator, meta) under ``directory``."""

    def __init__(self, directory: str | os.PathLike, keep: int):
        if keep < 1:
            raise ValueError(f"config.train.keep_checkpoints={keep} must be at least 1")
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=True, cleanup_tmp_directories=True, create=True
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=(STATE_ITEM, ITERATOR_ITEM, META_ITEM), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, iterator, meta: dict, metrics: dict | None = None) -> None:
        """Start an async save of the (globally replicated) ``state``; returns after the host copy."""
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                ITERATOR_ITEM: iterator_save_args(iterator),
                META_ITEM: ocp.args.JsonSave(meta),
            }
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, abstract_state, iterator) -> tuple[object, dict]:
        """State (laid out like ``abstract_state``) and meta of ``step``; ``iterator`` is moved in place."""
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                ITERATOR_ITEM: iterator_restore_args(iterator),
                META_ITEM: ocp.args.JsonRestore(),
            }
        )
        restored = self.manager.restore(step, args=args)
        return restored[STATE_ITEM], dict(restored[META_ITEM])

    def restore_newest_readable(self, abstract_state, iterator) -> tuple[int, object, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint that restores, or None when there is none.

        A damaged step (a disk error, a file cut short by a full disk) is set
        aside as ``<step>.damaged`` with a warning naming it and the step used
        instead, so the run continues from the newest good state and its later
        saves do not collide with the damaged step's number.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state, meta = self.restore(step, abstract_state, iterator)
            except Exception as error:  # orbax and tensorstore raise many types for a damaged step
                failures.append((step, error))
                continue
            for bad, error in failures:
                aside = self.directory / f"{bad}.damaged"
                with contextlib.suppress(FileNotFoundError):  # another process (shared disk) was first
                    os.replace(self.directory / str(bad), aside)
                log.warning("checkpoint step %d in %s cannot be restored (%s: %s); set aside as %s, resuming from "
                            "step %d", bad, self.directory, type(error).__name__, error_line(error), aside, step)
            if failures:
                self.manager.reload()
            return step, state, meta
        if failures:
            step, error = failures[0]
            raise BadInputError(
                f"none of the checkpoints {steps} can be restored (step {step}: {type(error).__name__}: "
                f"{error_line(error)})", path=self.directory,
                fix="if the model or data config changed since they were written, train in a new --workdir")
        return None

    def wait(self) -> None:
        """Block until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state, sharding):
    """Shapes and dtypes of ``state`` with ``sharding``: what ``restore`` fills in."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
