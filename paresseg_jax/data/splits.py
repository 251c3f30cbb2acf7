"""Cross-validation folds stratified by tumor type (the paper's 5-fold protocol).

Folds depend only on the set of (case id, stratum) pairs and the seed, never
on the order the cases are listed in, so every part of the library that
rebuilds the folds gets the same ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def stratified_folds(case_ids: Sequence[str], strata: Sequence, num_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Split cases into ``num_folds`` folds so each stratum is spread evenly.

    Within each stratum (sorted by name) the cases are shuffled with ``seed``
    and dealt round-robin; the deal continues across strata, so fold sizes
    differ by at most one and each stratum's count per fold by at most one.
    Each fold is returned sorted.
    """
    case_ids = [str(c) for c in case_ids]
    if len(case_ids) != len(strata):
        raise ValueError(f"stratified_folds: {len(case_ids)} case ids but {len(strata)} strata; give one stratum per case")
    if len(set(case_ids)) != len(case_ids):
        duplicates = sorted({c for c in case_ids if case_ids.count(c) > 1})
        raise ValueError(f"stratified_folds: duplicate case ids {duplicates}")
    if not 2 <= num_folds <= len(case_ids):
        raise ValueError(f"stratified_folds: num_folds must be between 2 and the number of cases ({len(case_ids)}), got {num_folds}")
    groups = defaultdict(list)
    for case_id, stratum in zip(case_ids, strata):
        groups[str(stratum)].append(case_id)
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(num_folds)]
    dealt = 0
    for stratum in sorted(groups):
        members = sorted(groups[stratum])
        for index in rng.permutation(len(members)):
            folds[dealt % num_folds].append(members[index])
            dealt += 1
    return [sorted(fold) for fold in folds]


def fold_split(case_ids: Sequence[str], strata: Sequence, fold: int, num_folds: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, test ids) for one fold of ``stratified_folds``."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold_split: fold must be in [0, {num_folds}), got {fold}")
    folds = stratified_folds(case_ids, strata, num_folds, seed)
    train = sorted(c for k, f in enumerate(folds) if k != fold for c in f)
    return train, folds[fold]
