"""Stratified folds: a partition, balanced per stratum, deterministic, order-independent."""

from collections import Counter

import numpy as np
import pytest

from paresseg_jax.data import splits

TYPES = ("Cyst", "FNH", "HCC", "HEM", "METs")


def _cohort(n=23):
    ids = [f"case_{i:03d}" for i in range(n)]
    strata = [TYPES[(i * 7) % len(TYPES)] if i % 4 else "HCC" for i in range(n)]  # uneven strata
    return ids, strata


def test_folds_partition_cases_and_balance_each_stratum():
    ids, strata = _cohort()
    folds = splits.stratified_folds(ids, strata, num_folds=5, seed=3)
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    stratum_of = dict(zip(ids, strata))
    for stratum, total in Counter(strata).items():
        per_fold = [sum(stratum_of[c] == stratum for c in f) for f in folds]
        assert sum(per_fold) == total
        assert max(per_fold) - min(per_fold) <= 1, (stratum, per_fold)


def test_folds_are_deterministic_and_independent_of_input_order():
    ids, strata = _cohort()
    order = np.random.default_rng(0).permutation(len(ids))
    a = splits.stratified_folds(ids, strata, 5, seed=1)
    b = splits.stratified_folds([ids[i] for i in order], [strata[i] for i in order], 5, seed=1)
    assert a == b
    assert a == splits.stratified_folds(ids, strata, 5, seed=1)
    assert a != splits.stratified_folds(ids, strata, 5, seed=2)


def test_fold_split_is_complement_of_the_fold():
    ids, strata = _cohort()
    folds = splits.stratified_folds(ids, strata, 5, seed=0)
    for k in range(5):
        train, test = splits.fold_split(ids, strata, k, 5, seed=0)
        assert test == folds[k]
        assert sorted(train + test) == sorted(ids) and not set(train) & set(test)


@pytest.mark.parametrize(
    "args, message",
    [
        ((["a", "b"], ["x"], 2), "one stratum per case"),
        ((["a", "a", "b"], ["x", "x", "y"], 2), "duplicate"),
        ((["a", "b"], ["x", "y"], 3), "num_folds"),
        ((["a", "b"], ["x", "y"], 1), "num_folds"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        splits.stratified_folds(*args)


def test_fold_out_of_range_raises():
    with pytest.raises(ValueError, match="fold must be"):
        splits.fold_split(["a", "b", "c"], ["x", "y", "z"], fold=3, num_folds=3)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.35])
def test_case_split_carves_validation_from_the_training_folds_stratified(fraction):
    ids, strata = _cohort()
    stratum_of = dict(zip(ids, strata))
    for fold in range(5):
        split = splits.case_split(ids, strata, fold, 5, val_fraction=fraction, seed=3)
        train, validation, test = (set(split[k]) for k in ("train", "validation", "test"))
        assert not (train & validation or train & test or validation & test)
        assert train | validation | test == set(ids)
        assert split["test"] == splits.stratified_folds(ids, strata, 5, seed=3)[fold]
        pool = sorted(train | validation)
        assert len(validation) == (round(fraction * len(pool)) if fraction else 0)
        for stratum, size in Counter(stratum_of[c] for c in pool).items():  # floor or ceiling of its share
            taken = sum(stratum_of[c] == stratum for c in validation)
            assert int(np.floor(fraction * size)) <= taken <= int(np.ceil(fraction * size)), (stratum, taken, size)
        assert split == splits.case_split(ids[::-1], strata[::-1], fold, 5, val_fraction=fraction, seed=3)


def test_validation_holdout_keeps_one_case_of_each_kind_or_refuses():
    train, validation = splits.validation_holdout(["a", "b"], ["x", "y"], 0.1)
    assert len(validation) == 1 and sorted(train + validation) == ["a", "b"]
    with pytest.raises(ValueError, match="none for training"):
        splits.validation_holdout(["a"], ["x"], 0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        splits.validation_holdout(["a", "b"], ["x", "y"], 1.0)
