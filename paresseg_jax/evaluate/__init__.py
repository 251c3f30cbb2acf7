"""Evaluation: per-case records and summary.json, scoring runs and prediction folders, the paper's tables,
paired t-tests, figures.

Modules: :mod:`summary` (records, Table 12 slice groups), :mod:`scoring` (a trained run on its test cases),
:mod:`predictions` (a folder of predicted masks), :mod:`robustness`, :mod:`tables`, :mod:`figures`. Training and
cross-validation are not imported here: :mod:`paresseg_jax.experiments` runs them.
"""
