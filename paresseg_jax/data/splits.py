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


def validation_holdout(case_ids: Sequence[str], strata: Sequence, fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): ``round(fraction * n)`` of the cases (at least one) held out, stratified.

    Validation is carved from training cases only, so that choosing a
    checkpoint on it never looks at the test fold. The count is shared among
    strata by largest remainder (ties to the larger stratum, then by name),
    so each stratum gives the floor or ceiling of its share; within a stratum
    the cases are drawn with ``seed``. ``fraction`` 0 gives no validation.
    """
    case_ids = [str(c) for c in case_ids]
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be in [0, 1) (config.data.val_fraction)")
    count = max(1, int(round(fraction * len(case_ids)))) if fraction > 0 else 0
    if count >= len(case_ids) > 0:
        raise ValueError(
            f"config.data.val_fraction={fraction} of {len(case_ids)} training cases leaves none for training; "
            "use a smaller fraction (0: no validation) or more cases"
        )
    groups = defaultdict(list)
    for case_id, stratum in zip(case_ids, strata):
        groups[str(stratum)].append(case_id)
    shares = {s: fraction * len(m) for s, m in groups.items()}
    taken = {s: int(np.floor(share)) for s, share in shares.items()}
    by_remainder = sorted(groups, key=lambda s: (-(shares[s] - taken[s]), -len(groups[s]), s))
    for stratum in by_remainder[: count - sum(taken.values())]:
        taken[stratum] += 1
    rng = np.random.default_rng(seed)
    validation = []
    for stratum in sorted(groups):
        members = sorted(groups[stratum])
        validation += [members[i] for i in rng.permutation(len(members))[: taken[stratum]]]
    held = set(validation)
    return sorted(c for c in case_ids if c not in held), sorted(validation)


def case_split(
    case_ids: Sequence[str], strata: Sequence, fold: int, num_folds: int = 5, val_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """``{'train', 'validation', 'test'}`` case ids of one cross-validation fold: the test fold held
    out, validation carved from the other folds (:func:`validation_holdout`); the three are disjoint."""
    train, test = fold_split(case_ids, strata, fold, num_folds, seed)
    stratum_of = dict(zip((str(c) for c in case_ids), strata))
    train, validation = validation_holdout(train, [stratum_of[c] for c in train], val_fraction, seed)
    return {"train": train, "validation": validation, "test": test}
