"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the cluster environment.

One process per host (or per GPU) runs the same program. With explicit
arguments they are used as given; otherwise JAX detects Slurm, Open MPI and
similar launchers from their environment variables. A plain single-process
run initialises nothing.
"""

from __future__ import annotations

import os

import jax

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launched_by_cluster() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    return any(name in os.environ for name in _CLUSTER_ENV)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the process group if this is a multi-process run; returns whether one was joined.

    CPU collectives go through gloo so that multi-process CPU runs (tests,
    debugging without accelerators) work; other backends are unaffected.
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and not _launched_by_cluster():
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError(
            "give --coordinator_address, --num_processes and --process_id together "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}), or none to use the environment"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return True
