"""Evaluation: scoring runs, the paper's tables, paired t-tests, figures, k-fold CV.

Modules: :mod:`scoring` (a run's test cases), :mod:`tables`, :mod:`figures`, :mod:`crossval`
(cross-validation, scoring folders/workdirs). The per-case records and ``summary.json`` they share with
inference are :mod:`paresseg_jax.summary`.
"""
