"""Data parallelism around the one train step: ``pmap`` or ``jit`` with shardings.

- ``pmap``: the state is replicated on every device (leading axis =
  device, one global array over all processes), the batch is split
  ``[devices, per_device, ...]``, gradients and
  the loss are ``pmean``-ed and BatchNorm statistics are cross-replica
  (the model is built with ``bn_axis_name=AXIS``).
- ``jit``: one device mesh over all devices of all processes, the state
  replicated (``NamedSharding(mesh, P())``), the batch one global array
  sharded along its first axis, assembled from each process's part with
  ``jax.make_array_from_process_local_data``. This is the layout that scales
  to multi-host meshes and the one checkpoints are written in, for both modes.

The state argument is donated in both modes: the step updates it in place.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("pmap", "jit")
AXIS = "batch"


class DataParallel:
    """Places states and batches on devices and wraps a step for one mode."""

    def __init__(self, mode: str, devices=None):
        if mode not in MODES:
            raise ValueError(f"unknown parallel mode {mode!r} (config.train.parallel); choose one of {MODES}")
        self.mode = mode
        self.devices = list(devices if devices is not None else jax.devices())
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.data_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def bn_axis_name(self) -> str | None:
        """What the model's ``bn_axis_name`` must be for this mode."""
        return AXIS if self.mode == "pmap" else None

    def check_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size % len(self.devices):
            raise ValueError(
                f"config.train.batch_size={global_batch_size} is not divisible by the {len(self.devices)} "
                f"devices; use a multiple of {len(self.devices)}"
            )

    def wrap_train_step(self, train_step: Callable) -> Callable:
        """Compiled step taking and returning the state in this mode's layout."""
        if self.mode == "pmap":
            return jax.pmap(train_step, axis_name=AXIS, devices=self.devices, donate_argnums=0)
        return jax.jit(
            train_step,
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )

    def put_state(self, state):
        """A host or globally replicated state -> this mode's layout."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: self._from_local(np.broadcast_to(_local_value(x), (n,) + np.shape(x))), state
            )
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, _local_value(x)), state)

    def global_state(self, state):
        """This mode's layout -> globally replicated arrays (what checkpoints hold)."""
        if self.mode == "jit":
            return state
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, _replica(x)), state)

    def host_state(self, state):
        """This mode's layout -> numpy on this host (for export and evaluation)."""
        if self.mode == "pmap":
            return jax.tree.map(_replica, state)
        return jax.tree.map(_local_value, state)

    def put_batch(self, batch: dict) -> dict:
        """This process's part of the global batch (numpy ``[B_local, ...]``) -> devices."""
        if self.mode == "pmap":
            n = len(self.local_devices)

            def split(x):
                if x.shape[0] % n:
                    raise ValueError(f"local batch of {x.shape[0]} does not split over {n} local devices")
                return self._from_local(np.reshape(x, (n, x.shape[0] // n) + x.shape[1:]))

            return {k: split(np.asarray(v)) for k, v in batch.items()}
        return {k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v)) for k, v in batch.items()}

    def host_metrics(self, metrics):
        """Device metrics (a dict, or a list of dicts read in one transfer) -> Python floats (the only host
        synchronisation; call off the hot path)."""
        if isinstance(metrics, dict):
            return self.host_metrics([metrics])[0]
        shard = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x  # noqa: E731
        local = jax.device_get([{k: shard(v) for k, v in m.items()} for m in metrics])
        entry = (lambda x: np.asarray(x)[0]) if self.mode == "pmap" else np.asarray  # pmap: [1, ...] per device
        return [{k: float(entry(v)) for k, v in m.items()} for m in local]

    def _from_local(self, x: np.ndarray) -> jax.Array:
        """``[local devices, ...]`` on this process -> the global ``[all devices, ...]`` array pmap takes."""
        return jax.make_array_from_process_local_data(self.data_sharding, x)


def _replica(x) -> np.ndarray:
    """Entry 0 of a pmap-layout array ``[devices, ...]`` (all entries are equal), from a local device."""
    return np.asarray(x.addressable_data(0))[0]


def _local_value(x) -> np.ndarray:
    """The value of a replicated array from a device this process holds (numpy passes through)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)
