"""paresseg-import-dicom: DICOM studies (e.g. TCIA's HCC-TACE-Seg download) into a cohort with manifest.json.

    paresseg-import-dicom --input HCC-TACE-Seg --output data/hcc_tace --require_seg
    paresseg-import-dicom --input STUDIES --output COHORT \\
        --phase_keyword="art=LIVER 3 PHASE AP" --phase_keyword=art=arterial --segment_label=tumor=Mass

Reads every DICOM file under --input (patient/study/series folders, any
depth), names each study's CT series by phase from its description, or,
failing that, from acquisition times, and turns its DICOM-SEG segments
(liver; tumor/mass/lesion) into liver and tumor masks on the PV grid. Writes
COHORT/<case>/{pv,art,nc,dl,liver,tumor}.nii.gz, COHORT/manifest.json and
COHORT/import_report.json (what was assigned how, what could not be).
Needs the DICOM extra: pip install 'paresseg_jax[dicom]'.
"""

import collections

from absl import app, flags

from paresseg_jax import cli, preflight
from paresseg_jax.data import dicom_import, layouts
from paresseg_jax.errors import PareSegError

_INPUT = flags.DEFINE_string("input", None, "folder of DICOM studies (patient/study/series/*.dcm)", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "cohort folder to write (case folders, manifest.json)", required=True)
_PHASE_KEYWORD = flags.DEFINE_multi_string(
    "phase_keyword", [],
    "PHASE=PHRASE, repeatable: series descriptions holding PHRASE (whole words, any case) are PHASE; the phrases "
    "given for a phase replace its defaults: "
    + "; ".join(f"{p}: {', '.join(words)}" for p, words in layouts.PHASE_KEYWORDS.items()))
_SEGMENT_LABEL = flags.DEFINE_multi_string(
    "segment_label", [],
    "MASK=PHRASE, repeatable (MASK: liver or tumor): DICOM-SEG segments whose label holds PHRASE make that mask; "
    "the phrases given for a mask replace its defaults: "
    + "; ".join(f"{m}: {', '.join(words)}" for m, words in dicom_import.SEGMENT_KEYWORDS.items()))
_REQUIRE_SEG = flags.DEFINE_boolean("require_seg", False, "import only studies with a DICOM-SEG (a training cohort)")
_ALLOW_GAPS = flags.DEFINE_boolean("allow_gaps", False, "resample a series with a missing slice onto even slices "
                                   "(with a warning) instead of failing its study")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "import into an --output folder that is not empty (its "
                                  "manifest.json, report and case folders of the same names are replaced)")


def _table(flag_name: str, values: list[str]) -> dict[str, list[str]]:
    table = collections.defaultdict(list)
    for value in values:
        key, sep, phrase = value.partition("=")
        if not sep or not key.strip() or not phrase.strip():
            raise app.UsageError(f"--{flag_name}={value!r}: expected NAME=PHRASE, e.g. --{flag_name}=art=arterial")
        table[key.strip().lower()].append(phrase.strip())
    return dict(table)


def main(argv):
    del argv
    preflight.existing(_INPUT.value, "the DICOM folder (--input)")
    preflight.output_folder(_OUTPUT.value, "the cohort folder (--output)", overwrite=_OVERWRITE.value)
    report = dicom_import.import_dicom(
        _INPUT.value, _OUTPUT.value,
        phase_keywords=_table("phase_keyword", _PHASE_KEYWORD.value),
        segment_keywords=_table("segment_label", _SEGMENT_LABEL.value),
        require_seg=_REQUIRE_SEG.value, allow_gaps=_ALLOW_GAPS.value,
    )
    for case in report["cases"]:
        name = case["imported"] or f"{case['patient_id']} (not imported)"
        phases = ", ".join(f"{p}={s['series']}" for p, s in case["phases"].items())
        print(f"{name}: {phases or 'no phases'}; masks: {', '.join(case.get('masks', [])) or 'none'}")
        for note in case["notes"]:
            print(f"    {note}")
    print(f"imported {report['imported']} of {report['studies']} studies into {_OUTPUT.value} "
          f"(details: {dicom_import.REPORT})")
    if report["failed"]:
        raise PareSegError(f"{report['failed']} of {report['studies']} studies failed (see above; the others were "
                           "imported)", path=_INPUT.value, fix="repair or remove those series and import again")


def run():
    cli.run_app(main, huge_page_malloc=False, cache_compilations=False)


if __name__ == "__main__":
    run()
