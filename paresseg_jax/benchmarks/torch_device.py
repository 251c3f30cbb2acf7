"""Where the PyTorch oracle runs in a side-by-side benchmark: on the GPU when JAX's is, else on the CPU.

A ratio only means something when both frameworks use the same kind of
device, so the oracle follows JAX's default backend; with CUDA it must
synchronise before a timed call returns, as JAX's ``block_until_ready`` does.
"""

from __future__ import annotations

import jax


def device() -> str:
    """'cuda' when JAX's default backend is a GPU and torch sees one, else 'cpu'."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def of(model) -> str:
    """The device type ('cpu', 'cuda') a torch model's parameters are on."""
    return next(model.parameters()).device.type


def synchronize(target: str) -> None:
    """Waits for the work queued on `target` (a no-op on the CPU, whose torch calls block)."""
    import torch

    if target == "cuda":
        torch.cuda.synchronize()
