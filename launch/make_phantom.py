"""paresseg-make-phantom: write a synthetic multi-phase CT cohort (our layout plus manifest.json).

    paresseg-make-phantom --out=data/phantom --num_cases=60
    paresseg-make-phantom --out=/tmp/tiny --num_cases=10 --size=96 --slices=24 --phases=pv,art,nc,dl

Cases cycle through the tumor types (Cyst, FNH, HCC, HEM, METs) and the two
scanner profiles (5 mm and 7 mm slices); each case is reproducible from
--seed and its index. What they look like (each tumor type's attenuation per
phase, ART misaligned by breathing): paresseg_jax/data/phantom.py.
"""

from absl import flags

from paresseg_jax import cli, flag_checks, preflight
from paresseg_jax.data import phantom
from paresseg_jax.errors import BadInputError

_OUT = flags.DEFINE_string("out", None, "cohort folder to write (one folder per case, manifest.json)", required=True)
_NUM_CASES = flags.DEFINE_integer("num_cases", 60, "number of cases (a multiple of 10 balances types and scanners)")
_SEED = flags.DEFINE_integer("seed", 0, "cohort seed: case i uses a seed derived from (seed, i)")
_SIZE = flags.DEFINE_integer("size", 512, "in-plane size in pixels (height = width)")
_SLICES = flags.DEFINE_integer("slices", 40, "slices per case")
_PHASES = flags.DEFINE_list("phases", ["pv", "art"], "phases to write, PV included (pv, art, nc, dl)")
_NUM_FOLDS = flags.DEFINE_integer("num_folds", 5, "folds for the manifest's 'split' (stratified by tumor type; "
                                  "at most --num_cases)")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "write into an --out folder that is not empty (its manifest.json "
                                  "and case folders of the same names are replaced)")


def main(argv):
    del argv
    flag_checks.all_in_range(
        {"num_cases": _NUM_CASES.value, "size": _SIZE.value, "slices": _SLICES.value, "num_folds": _NUM_FOLDS.value},
        {"num_cases": dict(low=1), "size": dict(low=phantom.MIN_SHAPE[1]), "slices": dict(low=phantom.MIN_SHAPE[0]),
         "num_folds": dict(low=1)})
    unknown = sorted(set(_PHASES.value) - set(phantom.PHASE_ORDER))
    if unknown or "pv" not in _PHASES.value:
        raise BadInputError(f"--phases={','.join(_PHASES.value)}: " + (f"unknown phases {unknown}" if unknown else
                            "PV is missing"), fix=f"give pv and any of {', '.join(phantom.PHASE_ORDER)}")
    preflight.output_folder(_OUT.value, "the cohort folder (--out)", overwrite=_OVERWRITE.value)
    out = phantom.make_cohort(
        _OUT.value,
        _NUM_CASES.value,
        seed=_SEED.value,
        shape=(_SLICES.value, _SIZE.value, _SIZE.value),
        phases=tuple(_PHASES.value),
        num_folds=_NUM_FOLDS.value,
    )
    print(f"wrote {_NUM_CASES.value} cases and {out / 'manifest.json'}")


def run():
    cli.run_app(main, huge_page_malloc=False, cache_compilations=False)


if __name__ == "__main__":
    run()
