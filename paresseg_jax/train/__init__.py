"""Training: state, the one train step and its parallel wrappers, checkpoints, the loop.

``train_and_evaluate(config, workdir)`` is the entry point (``paresseg-train``).
"""


def train_and_evaluate(config, workdir: str) -> dict:
    """See :func:`paresseg_jax.train.loop.train_and_evaluate` (imported on use: no import-time cost)."""
    from paresseg_jax.train.loop import train_and_evaluate as run

    return run(config, workdir)
