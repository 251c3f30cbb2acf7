"""Stratified folds: a partition, balanced per stratum, deterministic, order-independent."""

import json
from collections import Counter

import numpy as np
import pytest

from paresseg_jax.data import splits
from paresseg_jax.errors import PareSegError

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


# ----------------------------------------------------------------------------- patients and manifest splits


def _records(n=30, studies=3):
    """Cases of n // studies patients, each with ``studies`` studies (the DICOM importer's <patient>_<date>)."""
    return [{"case_id": f"p{i // studies:02d}_{i % studies}", "patient_id": f"p{i // studies:02d}",
             "tumor_type": TYPES[(i // studies) % len(TYPES)]} for i in range(n)]


def test_a_patients_studies_are_never_on_two_sides_of_a_split():
    records = _records()
    patient = {r["case_id"]: r["patient_id"] for r in records}
    tests = []
    for fold in range(5):
        split = splits.cohort_split(records, fold, 5, val_fraction=0.2, seed=1)
        sides = [{patient[c] for c in split[part]} for part in ("train", "validation", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2]), split
        assert split["validation"] and sorted(sum(split.values(), [])) == sorted(patient)
        tests += split["test"]
    assert sorted(tests) == sorted(patient)  # every case tested once
    # stratified at patient level: each fold holds 2 patients, of 2 tumor types
    test_types = [r["tumor_type"] for r in records if r["case_id"] in splits.cohort_split(records, 0, 5)["test"]]
    assert len(set(test_types)) == 2 and len(test_types) == 6


def test_without_patient_ids_a_cohort_splits_as_case_split():
    ids = [f"case_{i:03d}" for i in range(23)]
    strata = [TYPES[(i * 7) % len(TYPES)] for i in range(23)]
    records = [{"case_id": c, "tumor_type": s, "patient_id": None} for c, s in zip(ids, strata)]
    folds = splits.stratified_folds(ids, strata, 5, seed=2)
    for fold in range(5):
        assert splits.cohort_split(records, fold, 5, 0.2, seed=2)["test"] == folds[fold]


def test_a_manifests_folds_and_sets_are_honoured():
    records = [{"case_id": f"c{i}", "tumor_type": "HCC", "split": f"fold-{i % 2}"} for i in range(6)]
    split = splits.cohort_split(records, 1, num_folds=2)
    assert split["test"] == ["c1", "c3", "c5"] and split["train"] == ["c0", "c2", "c4"]
    with pytest.raises(PareSegError, match="num_folds=2"):
        splits.cohort_split(records, 0, num_folds=5)
    fixed = [{"case_id": f"c{i}", "tumor_type": "HCC", "split": ("train", "train", "validation", "test")[i % 4]}
             for i in range(8)]
    assert splits.cohort_split(fixed, 0, 5) == {"train": ["c0", "c1", "c4", "c5"], "validation": ["c2", "c6"],
                                                "test": ["c3", "c7"]}
    with pytest.raises(PareSegError, match="fold=0"):
        splits.cohort_split(fixed, 1, 5)


@pytest.mark.parametrize("records, message", [
    ([{"case_id": "a", "split": "fold-0"}, {"case_id": "b"}], "not for \\['b'\\]"),
    ([{"case_id": "a", "split": "fold-0", "patient_id": "p"}, {"case_id": "b", "split": "fold-1", "patient_id": "p"}],
     "patient 'p'"),
    ([{"case_id": "a", "split": "holdout"}, {"case_id": "b", "split": "test"}], "'holdout'"),
])
def test_inconsistent_manifest_splits_are_refused(records, message):
    with pytest.raises(PareSegError, match=message):
        splits.cohort_split(records, 0, 2)


def test_training_folds_come_from_the_manifests_cases_not_the_cache_folder(tmp_path):
    from paresseg_jax import config_defaults, runs
    from paresseg_jax.data import phantom
    from paresseg_jax.data.layouts import write_manifest

    cohort = phantom.make_cohort(tmp_path / "cohort", 6, shape=(4, 16, 16), progress=False)
    config = config_defaults.get_config()
    config.data.cohort_dir, config.data.cache_root = str(cohort), str(tmp_path / "cache")
    config.data.preprocess = {"register": False}
    config.data.preprocess_workers, config.data.num_folds, config.data.val_fraction = 1, 2, 0.0
    runs.prepared_cache(config)  # the cache now holds all six cases
    records = [{k: v for k, v in r.items() if k != "split"} for r in json.loads((cohort / "manifest.json").read_text())["cases"]]
    records[1]["patient_id"] = records[0]["patient_id"] = "patient-a"  # two studies of one patient
    write_manifest(cohort, records[:5])  # case_0005 left the cohort
    for fold in (0, 1):
        cases = runs.fold_cases(_with_fold(config, fold))
        ids = {part: {c.case_id for c in members} for part, members in cases.items()}
        assert set().union(*ids.values()) == {f"case_{i:04d}" for i in range(5)}
        assert any({"case_0000", "case_0001"} <= members for members in ids.values())


def _with_fold(config, fold):
    config = config.copy_and_resolve_references()
    config.data.fold = fold
    return config


def test_by_default_every_training_fold_case_trains():
    """The paper trains on all training folds: no validation unless asked for (val_fraction, or 'best')."""
    from paresseg_jax import config_defaults, runs

    config = config_defaults.get_config()
    records = [{"case_id": f"c{i}", "tumor_type": TYPES[i % 5]} for i in range(25)]
    split = runs.split_ids(config, records)
    assert split["validation"] == [] and len(split["train"]) == 20 and config.eval.checkpoint == "last"
