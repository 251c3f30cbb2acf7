"""Segment every study of a cohort or folder of studies: label maps, probabilities, one summary.

The input is anything ``paresseg_jax.data.layouts.read_cohort`` reads (a
``manifest.json``, LiTS files, case folders holding a ``pv`` image). Each
case becomes ``<output>/<case_id>.nii.gz``, a uint8 label map in PV geometry
with LiTS labels (0 background, 1 liver, 2 tumor), as nnU-Net and the
TotalSegmentator family write them. The ROI comes from the liver model when
one is given, else from the case's own liver mask, else there is none.
With ``output_format='dicom_seg'`` the label map is written as
``<output>/<case_id>.dcm``, a DICOM-SEG referencing the case's PV series
(every PV must then be a DICOM series folder, or come from
``paresseg-import-dicom``, whose manifest names its source folder). Cases with a tumor mask are
scored as ``paresseg-evaluate`` scores them, and ``<output>/summary.json``
holds every case's record, its lesions included; ``<output>/lesions.csv``
lists every case's lesions (``paresseg_jax.lesions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from paresseg_jax import lesions, preflight, stage_times
from paresseg_jax.atomic import atomic_path
from paresseg_jax.data.case import read_case
from paresseg_jax.data.images import write_image
from paresseg_jax.data.layouts import CaseEntry, read_cohort
from paresseg_jax.errors import BadInputError, PareSegError
from paresseg_jax.summary import SUMMARY_FILE, evaluate_case, read_summary, write_summary
from paresseg_jax.infer import resume
from paresseg_jax.infer.cascade import LIVER_LABEL, TUMOR_LABEL
from paresseg_jax.infer.lesion_overlay import lesion_overlay
from paresseg_jax.infer.run_report import REPORT_FILE, write_report
from paresseg_jax.infer.study import (ModelSource, Segmenter, check_dicom_series, roi_source, study_lesions, volumes_ml,
                                      write_dicom_seg)
from paresseg_jax.metrics import case_metrics
from paresseg_jax.workdir import check_not_trained_on

PROBABILITY_SUFFIX = "_tumor_prob"
OVERLAY_SUFFIX = "_lesions.png"
OUTPUT_FORMATS = {"nifti": ".nii.gz", "dicom_seg": ".dcm"}
LABELS = {"background": 0, "liver": LIVER_LABEL, "tumor": TUMOR_LABEL}


def label_map_path(output: str | os.PathLike, case_id: str, output_format: str = "nifti") -> Path:
    return Path(output) / f"{case_id}{OUTPUT_FORMATS[output_format]}"


def probability_path(output: str | os.PathLike, case_id: str) -> Path:
    return Path(output) / f"{case_id}{PROBABILITY_SUFFIX}.nii.gz"


def predict_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: ModelSource | Segmenter,
    *,
    liver_model: ModelSource | None = None,
    save_probabilities: bool = False,
    output_format: str = "nifti",
    resample_masks: bool = False,
    liver_label: int | None = None,
    eval_config: Mapping | None = None,
    preprocess_config: Mapping | None = None,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    overlays: bool = False,
    allow_training_cases: bool = False,
) -> dict:
    """Segment every case of ``input_dir`` into ``output_dir``; returns the ``summary.json`` content.

    Models are loaded once (``model``/``liver_model`` as for
    :func:`paresseg_jax.infer.study.predict_files`, ensembles included).
    Every case is checked for the model's phases before any is segmented.
    ``resample_masks``: allow the cases' masks on another grid than PV.
    ``liver_label``: every case's liver file is a multi-label map (e.g. a
    TotalSegmentator output), the liver being this value. Finished cases are
    skipped unless ``overwrite``; ``num_parts``/``part_id`` take every
    ``num_parts``-th case (``paresseg_jax.infer.resume``). The summary holds
    every finished case of the folder, whichever part finished it.
    ``overlays``: also ``<case_id>_lesions.png`` (``infer.lesion_overlay``);
    ``report.md`` sums the run up (``infer.run_report``). Cases with a tumor
    mask are scored, so cases a model's run trained or validated on are
    refused unless ``allow_training_cases``.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}: choose one of {sorted(OUTPUT_FORMATS)}")
    resume.check_part(num_parts, part_id)
    check_run(input_dir, output_dir, save_probabilities, output_format, overlays)
    segmenter = model if isinstance(model, Segmenter) else Segmenter.load(model, liver_model, eval_config, preprocess_config)
    entries = _checked_entries(input_dir, segmenter, resample_masks, liver_label, allow_training_cases, output_format)
    run = resume.run_key(models=resume.models_checksum([segmenter.tumor, segmenter.liver]),
                         options=segmenter.options, preprocess=segmenter.preprocess_config, format=output_format,
                         probabilities=save_probabilities, liver_label=liver_label,
                         postprocessing=segmenter.postprocessing, overlays=overlays)
    keys = {entry.case_id: resume.case_key(run, entry) for entry in entries}
    done = {} if overwrite else resume.finished(output_dir, keys)
    todo = [entry for entry in resume.part_of(entries, num_parts, part_id) if entry.case_id not in done]
    record_file = resume.record_path(output_dir, num_parts, part_id)
    failed, interrupted = _segment_cases(todo, keys, record_file, segmenter, Path(output_dir), save_probabilities,
                                         output_format, overlays)
    summary = _summarize(output_dir, entries, keys, failed, _run_info(input_dir, segmenter, entries, todo, interrupted))
    finished = [r for r in summary["cases"] if "failed" not in r]
    if interrupted:
        raise PareSegError(f"interrupted after {len(finished)} of {len(entries)} cases; their files and a summary.json "
                           "of them are kept", path=output_dir, fix="run the same command again to segment the others")
    return summary


def _run_info(input_dir, segmenter: Segmenter, entries: list, todo: list, interrupted: bool) -> dict:
    """``summary.json``'s ``info``: the input, models, labels and settings, and what this call segmented."""
    return {"input": str(input_dir), "models": list(segmenter.tumor.sources),
            "liver_models": None if segmenter.liver is None else list(segmenter.liver.sources),
            "labels": LABELS, "settings": segmenter.options, "postprocessing": segmenter.postprocessing,
            "cases_in_input": len(entries),
            "predicted_now": [entry.case_id for entry in todo], "interrupted": interrupted}


def _summarize(output_dir, entries: list, keys: Mapping, failed: Mapping, info: dict) -> dict:
    """The run files from every part's finished cases and this call's failures, read and written under the
    folder's lock (``resume.summary_lock``), so parts finishing at once cannot leave a summary missing one's
    case; returns the summary."""
    with resume.summary_lock(output_dir):
        found = {**resume.finished(output_dir, keys), **failed}  # this part's cases and the other parts'
        records = [found[entry.case_id] for entry in entries if entry.case_id in found]
        return _write_run_files(output_dir, records, [r for r in records if "failed" not in r], info)


def _write_run_files(output_dir, records: list, finished: list, info: dict) -> dict:
    """The run's lesions.csv and report.md (finished cases) and summary.json (every record); returns the summary."""
    lesions.write_csv(Path(output_dir) / lesions.CSV_FILE,
                      [row for r in finished for row in lesions.csv_rows(r["case_id"], r["lesions"]["lesions"])])
    write_report(output_dir, finished, f"paresseg-predict: {Path(info['input']).name}")
    return read_summary(write_summary(output_dir, records, **info))


def _checked_entries(input_dir, segmenter: Segmenter, resample_masks: bool, liver_label: int | None,
                     allow_training_cases: bool, output_format: str) -> list[CaseEntry]:
    """The cohort's entries, each reading the model's phases, after the checks that need the models: no scored
    case the models' runs trained on, a DICOM series behind every PV for DICOM-SEG."""
    entries = [dataclasses.replace(_with_phases(entry, segmenter, input_dir, resample_masks), liver_label=liver_label)
               for entry in read_cohort(input_dir)]
    models = list(segmenter.tumor.sources) + ([] if segmenter.liver is None else list(segmenter.liver.sources))
    check_not_trained_on([e.case_id for e in entries if e.tumor is not None or e.segmentation is not None], models,
                         input_dir, allow_training_cases)
    if output_format == "dicom_seg":
        for entry in entries:
            check_dicom_series(entry.phases["pv"], f"DICOM-SEG output (case {entry.case_id!r})", entry.metadata)
    return entries


def _segment_cases(todo, keys: Mapping, record_file: Path, segmenter: Segmenter, output: Path,
                   save_probabilities: bool, output_format: str, overlays: bool) -> tuple[dict, bool]:
    """Segment `todo`, appending each finished case to `record_file` as soon as its outputs are written;
    returns ``(failed case records, whether Ctrl-C stopped the run)``."""
    failed = {}
    with tqdm(todo, desc="studies", unit="study") as studies, tqdm(desc="slices", unit="slice", leave=False) as slices:
        try:
            for entry in studies:
                studies.set_postfix_str(entry.case_id)
                record = _case_or_failure(entry, segmenter, output, save_probabilities, output_format,
                                          _slice_bar(slices, entry.case_id), overlays=overlays)
                if "failed" in record:  # not recorded as finished: a rerun tries it again
                    failed[entry.case_id] = record
                else:
                    resume.append(record_file, keys[entry.case_id], record)
        except KeyboardInterrupt:  # the finished cases are kept, with a summary that lists them
            return failed, True
    return failed, False


def _case_or_failure(entry: CaseEntry, *args, **options) -> dict:
    """A case's record; a case whose voxels turn out bad (NaN, a failed registration) is recorded as failed, with
    the reason, and the others go on (an output that cannot be written stops the run)."""
    try:
        return _predict_case(entry, *args, **options)
    except BadInputError as error:
        return {"case_id": entry.case_id, "tumor_type": entry.metadata.get("tumor_type"), "failed": error.message}


def check_run(input_dir: str | os.PathLike, output_dir: str | os.PathLike, save_probabilities: bool = False,
              output_format: str = "nifti", overlays: bool = False) -> None:
    """Every case's image headers, and every output of the run named, before any work: no output may meet an
    input or another output (one case's label map and another's probability map, a label map over a PV file
    when ``output_dir`` holds the inputs)."""
    entries = read_cohort(input_dir)
    output_dir = Path(output_dir)
    outputs = [(output_dir / SUMMARY_FILE, "the run's summary"), (output_dir / lesions.CSV_FILE, "the run's lesions"),
               (output_dir / REPORT_FILE, "the run's report"), (output_dir / resume.LOCK_FILE, "the run's lock")]
    for entry in entries:
        outputs.append((label_map_path(output_dir, entry.case_id, output_format), f"case {entry.case_id!r}'s label map"))
        if save_probabilities:
            outputs.append((probability_path(output_dir, entry.case_id), f"case {entry.case_id!r}'s probabilities"))
        if overlays:
            outputs.append((output_dir / f"{entry.case_id}{OVERLAY_SUFFIX}", f"case {entry.case_id!r}'s overlay"))
    inputs = preflight.cohort_inputs(entries, input_dir)
    preflight.outputs_apart(outputs, inputs)
    for entry in entries:  # every header before any case is segmented
        for path in preflight.case_files(entry):
            preflight.image(path, f"case {entry.case_id!r}'s image")


def _with_phases(entry: CaseEntry, segmenter: Segmenter, input_dir, resample_masks: bool) -> CaseEntry:
    """The entry reading only the phases the model uses. A phase missing is given as absent to models trained
    with phase dropout; for others it is an error naming the case."""
    missing = segmenter.missing_phases(entry.phases)
    if missing and (segmenter.tumor.phase_dropout <= 0 or "pv" in missing):
        raise PareSegError(
            f"case {entry.case_id!r} has no image for phase(s) {missing}, which the model uses {segmenter.phases}"
            + ("" if "pv" in missing else " and was trained without phase dropout"),
            path=input_dir, fix="add those images to every case, or use a model of the phases the cohort has "
            "(or one trained with config.train.phase_dropout > 0)",
        )
    return dataclasses.replace(entry, phases={p: entry.phases[p] for p in segmenter.phases if p in entry.phases},
                               resample_masks=entry.resample_masks or resample_masks)


def _slice_bar(bar: tqdm, case_id: str):
    """``progress(stage, done, total)`` for the slices bar, restarted (count and clock) per case and stage."""
    def update(stage: str, done: int, total: int) -> None:
        description = f"{case_id} {stage}"
        if bar.desc != description or done < bar.n:
            bar.reset(total=total)
            bar.set_description_str(description, refresh=False)
        bar.update(done - bar.n)

    return update


def _predict_case(entry, segmenter: Segmenter, output: Path, save_probabilities: bool, output_format: str,
                  progress, overlays: bool = False) -> dict:
    start = time.perf_counter()
    with stage_times.recording() as times:
        with stage_times.stage("reading"):
            case = read_case(entry)
        given_liver = None if segmenter.liver is not None else case.liver
        result, images, _ = segmenter.segment_case(case, liver=given_liver, progress=progress, sources=entry.phases,
                                                    whole_phases=overlays)
        with stage_times.stage("measuring"):
            found = study_lesions(result, case)
        with stage_times.stage("writing"):
            files = _write_case(entry, case, result, output, save_probabilities, output_format)
            if overlays:
                shown = {p: images[p] for p in segmenter.phases if p in entry.phases}
                files["overlay"] = str(lesion_overlay(shown, result["mask"], found["lesions"],
                                                      output / f"{case.case_id}{OVERLAY_SUFFIX}",
                                                      spacing_zyx=case.spacing_zyx, title=case.case_id))
        with stage_times.stage("measuring"):
            info = {"roi": roi_source(result, given_liver is not None), **volumes_ml(result, case), "lesions": found,
                    "files": files, "scanner": case.metadata.get("scanner"),
                    "absent_phases": segmenter.missing_phases(entry.phases)}
            if segmenter.liver is not None and case.liver is not None:
                info["liver_metrics"] = case_metrics(result["liver"], case.liver, case.spacing_zyx)
            if case.tumor is None:
                record = {"case_id": case.case_id, "tumor_type": case.metadata.get("tumor_type"), **info}
            else:
                record = evaluate_case(result["mask"], case.tumor, case.spacing_zyx, case.case_id,
                                       case.metadata.get("tumor_type"), **info)
    record["stage_times"] = times.record()
    record["seconds"] = time.perf_counter() - start
    return record


def _write_case(entry, case, result: dict, output: Path, save_probabilities: bool, output_format: str) -> dict:
    """A case's label map and probabilities, written together or neither; returns their paths."""
    files = {"labels": str(label_map_path(output, case.case_id, output_format))}
    with contextlib.ExitStack() as outputs:
        labels = outputs.enter_context(atomic_path(files["labels"]))
        if output_format == "dicom_seg":
            source = check_dicom_series(entry.phases["pv"], f"DICOM-SEG output (case {entry.case_id!r})", entry.metadata)
            write_dicom_seg(result["labels"], case, source, labels)
        else:
            write_image(result["labels"], case, labels)
        if save_probabilities:
            files["probabilities"] = str(probability_path(output, case.case_id))
            write_image(result["prob"], case, outputs.enter_context(atomic_path(files["probabilities"])))
    return files


def case_line(record: Mapping) -> str:
    """One line about a segmented case: volumes, Dice when scored, time."""
    if "failed" in record:
        return f"{record['case_id']}  FAILED: {record['failed']}"
    parts = [record["case_id"], f"tumor {record['tumor_ml']:.1f} ml in {record['lesions']['count']} lesion(s)"]
    if "liver_ml" in record:
        parts.append(f"liver {record['liver_ml']:.1f} ml ({record['roi']})")
    if "liver_metrics" in record:
        parts.append(f"liver Dice {100 * record['liver_metrics']['dice']:.1f}%")
    if "metrics" in record:
        parts.append(f"tumor Dice {100 * record['metrics']['dice']:.1f}%")
    if record.get("absent_phases"):
        parts.append(f"without {', '.join(p.upper() for p in record['absent_phases'])}")
    parts.append(f"{record['seconds']:.1f} s")
    if "stage_times" in record:  # records of older runs have none
        parts.append(f"({stage_times.line(record['stage_times'])})")
    return "  ".join(parts)
