"""Evaluation: scoring runs and prediction folders, the paper's tables, paired t-tests, figures.

Modules: :mod:`scoring` (a trained run on its test cases), :mod:`predictions` (a folder of predicted masks),
:mod:`robustness`, :mod:`tables`, :mod:`figures`. The per-case records and ``summary.json`` they share with
inference are :mod:`paresseg_jax.summary`. Training and cross-validation are not imported here:
:mod:`paresseg_jax.experiments` runs them.
"""
