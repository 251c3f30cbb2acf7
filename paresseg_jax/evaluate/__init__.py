"""Evaluation: per-case records and summary.json, the paper's tables, paired t-tests, figures, k-fold CV.

Modules: :mod:`summary` (records, Table 12 slice groups), :mod:`tables`,
:mod:`figures`, :mod:`crossval` (cross-validation, scoring folders/workdirs).
"""
