"""Experiments: the layer above training and evaluation that trains runs and scores them.

:mod:`folds` runs one fold (the cascade's liver stage, the tumor runs, their scores) for
:mod:`crossval` (``paresseg-evaluate --config``), :mod:`demo` (``paresseg-demo``) and the ablation
(:mod:`ablation_plan`, the study a TOML file describes; :mod:`ablation`, its scheduler and pooling).
"""
