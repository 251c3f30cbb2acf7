"""Cross-validation folds stratified by tumor type (the paper's 5-fold protocol), a patient's studies together.

Folds depend only on the set of (case id, stratum) pairs and the seed, never
on the order the cases are listed in, so every part of the library that
rebuilds the folds gets the same ones.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Mapping, Sequence

import numpy as np

from paresseg_jax.errors import BadInputError, PareSegError


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
    return cohort_split([{"case_id": c, "tumor_type": str(s)} for c, s in zip(case_ids, strata)],
                        fold, num_folds, val_fraction, seed)


FIXED_SETS = ("train", "validation", "test")


def cohort_split(records: Sequence[Mapping], fold: int, num_folds: int = 5, val_fraction: float = 0.0,
                 seed: int = 0) -> dict[str, list[str]]:
    """:func:`case_split` over a cohort's case records (``case_id``, ``tumor_type``, ``patient_id``, ``fold`` or
    ``split``, as a manifest gives them), with a patient's studies always in one set.

    Patients are what is dealt: a patient's stratum is its studies' most
    common tumor type (ties: the first by case id), a case without
    ``patient_id`` is its own patient, so a cohort of one study per patient
    splits exactly as :func:`case_split`. Folds a manifest gives (``fold``:
    K, or ``split``: 'fold-K') replace the stratified ones; sets it gives
    (``split``: 'train' / 'validation' / 'test') are the split itself.
    """
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold} (config.data.fold, num_folds)")
    ids = [str(r["case_id"]) for r in records]
    cases_of = defaultdict(list)
    for case_id, record in sorted(zip(ids, records)):
        cases_of[str(record.get("patient_id") or case_id)].append(case_id)
    stratum = {i: str(r.get("tumor_type") or "none") for i, r in zip(ids, records)}
    patients = sorted(cases_of)
    strata = {p: Counter(stratum[c] for c in cases_of[p]).most_common(1)[0][0] for p in patients}
    given = _given_sets(ids, records, cases_of)
    if given and all(isinstance(v, str) for v in given.values()):
        if fold != 0:
            raise PareSegError(f"the manifest fixes the split (split: {'/'.join(FIXED_SETS)}): it is fold 0 only, "
                               f"not fold {fold}", fix="set config.data.fold=0")
        sets = {part: [p for p in patients if given[p] == part] for part in FIXED_SETS}
    else:
        folds = _given_folds(given, patients, num_folds) if given else stratified_folds(
            patients, [strata[p] for p in patients], num_folds, seed)
        train = sorted(p for k, members in enumerate(folds) if k != fold for p in members)
        sets = dict(zip(("train", "validation"), validation_holdout(train, [strata[p] for p in train], val_fraction, seed)))
        sets["test"] = folds[fold]
    return {part: sorted(c for p in sets[part] for c in cases_of[p]) for part in FIXED_SETS}


def _given_sets(ids, records, cases_of) -> dict[str, int | str]:
    """Patient -> the fold (int) or set (str) the records give, {} when none does; refused when only some
    cases give one, or a patient's studies are given different ones."""
    given = {}
    for case_id, record in zip(ids, records):
        value = record.get("fold", record.get("split"))
        if value is not None and not isinstance(value, int):
            value = str(value)
            if value.startswith("fold-") and value[5:].isdigit():
                value = int(value[5:])
            elif value not in FIXED_SETS:
                raise BadInputError(f"case {case_id!r} has split {value!r}",
                                    fix=f"give 'fold-K' or one of {FIXED_SETS} in the manifest, or leave split out")
        given[case_id] = value
    if all(v is None for v in given.values()):
        return {}
    missing = sorted(c for c, v in given.items() if v is None)
    if missing:
        raise BadInputError(f"the manifest gives a fold or split for some cases but not for {missing}",
                            fix="give every case one, or none (folds stratified by tumor type)")
    by_patient = {}
    for patient, cases in cases_of.items():
        values = {given[c] for c in cases}
        if len(values) > 1:
            raise BadInputError(f"patient {patient!r}'s studies {cases} are in different folds or sets {sorted(map(str, values))}",
                                fix="put a patient's studies in one fold (split) in the manifest")
        by_patient[patient] = values.pop()
    if len({type(v) for v in by_patient.values()}) > 1:
        raise BadInputError("the manifest mixes folds ('fold-K') and sets (train/validation/test)", fix="use one kind")
    return by_patient


def _given_folds(given: Mapping[str, int], patients: Sequence[str], num_folds: int) -> list[list[str]]:
    found = sorted(set(given.values()))
    if found != list(range(num_folds)):
        raise PareSegError(f"the manifest's folds are {found}, not 0..{num_folds - 1}",
                           fix=f"set config.data.num_folds={len(found)}" if found == list(range(len(found)))
                           else "number the manifest's folds from 0 without gaps")
    return [[p for p in patients if given[p] == k] for k in range(num_folds)]
