"""Training: state, the one train step and its parallel wrappers, checkpoints, the loop.

``train_and_evaluate(config, workdir)`` is the entry point (``paresseg-train``); code that runs
trainings (cross-validation, the demo, the ablation) calls the functions here, never ``train.loop``.
Each imports the loop on use: importing this package costs nothing.
"""


def train_and_evaluate(config, workdir: str) -> dict:
    """See :func:`paresseg_jax.train.loop.train_and_evaluate`."""
    from paresseg_jax.train import loop

    return loop.train_and_evaluate(config, workdir)


def train_unless_finished(config, workdir) -> dict | None:
    """See :func:`paresseg_jax.train.loop.train_unless_finished`."""
    from paresseg_jax.train import loop

    return loop.train_unless_finished(config, workdir)


def is_finished(config, workdir) -> bool:
    """See :func:`paresseg_jax.train.loop.is_finished`."""
    from paresseg_jax.train import loop

    return loop.is_finished(config, workdir)
