"""Segment every study of a cohort or folder of studies: label maps, probabilities, one summary.

The input is anything ``paresseg_jax.data.io.read_cohort`` reads (a
``manifest.json``, LiTS files, case folders holding a ``pv`` image). Each
case becomes ``<output>/<case_id>.nii.gz``, a uint8 label map in PV geometry
with LiTS labels (0 background, 1 liver, 2 tumor), as nnU-Net and the
TotalSegmentator family write them. The ROI comes from the liver model when
one is given, else from the case's own liver mask, else there is none.
With ``output_format='dicom_seg'`` the label map is written as
``<output>/<case_id>.dcm``, a DICOM-SEG referencing the case's PV series
(every PV must then be a DICOM series folder). Cases with a tumor mask are
scored as ``paresseg-evaluate`` scores them, and ``<output>/summary.json``
holds every case's record.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from paresseg_jax.data import io
from paresseg_jax.errors import PareSegError
from paresseg_jax.evaluate.summary import evaluate_case, read_summary, write_summary
from paresseg_jax.infer.cascade import LIVER_LABEL, TUMOR_LABEL
from paresseg_jax.infer.study import (ModelSource, Segmenter, check_dicom_series, volumes_ml, write_dicom_seg,
                                      write_image)
from paresseg_jax.metrics import case_metrics
from paresseg_jax.workdir import check_not_trained_on

PROBABILITY_SUFFIX = "_tumor_prob"
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
    eval_config: Mapping | None = None,
    preprocess_config: Mapping | None = None,
    allow_training_cases: bool = False,
) -> dict:
    """Segment every case of ``input_dir`` into ``output_dir``; returns the ``summary.json`` content.

    Models are loaded once (``model``/``liver_model`` as for
    :func:`paresseg_jax.infer.study.predict_files`, ensembles included).
    Every case is checked for the model's phases before any is segmented.
    ``resample_masks``: allow the cases' masks on another grid than PV.
    Cases with a tumor mask are scored, so cases a model's run trained or
    validated on are refused unless ``allow_training_cases``.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}: choose one of {sorted(OUTPUT_FORMATS)}")
    segmenter = model if isinstance(model, Segmenter) else Segmenter.load(model, liver_model, eval_config, preprocess_config)
    entries = [_with_phases(entry, segmenter, input_dir, resample_masks) for entry in io.read_cohort(input_dir)]
    models = list(segmenter.tumor.sources) + ([] if segmenter.liver is None else list(segmenter.liver.sources))
    check_not_trained_on([e.case_id for e in entries if e.tumor is not None or e.segmentation is not None], models,
                         input_dir, allow_training_cases)
    if output_format == "dicom_seg":
        for entry in entries:
            check_dicom_series(entry.phases["pv"], f"DICOM-SEG output (case {entry.case_id!r})")
    records = []
    with tqdm(entries, desc="studies", unit="study") as studies, tqdm(desc="slices", unit="slice", leave=False) as slices:
        for entry in studies:
            studies.set_postfix_str(entry.case_id)
            bar = _slice_bar(slices, entry.case_id)
            records.append(_predict_case(entry, segmenter, Path(output_dir), save_probabilities, output_format, bar))
    info = {"input": str(input_dir), "models": list(segmenter.tumor.sources),
            "liver_models": None if segmenter.liver is None else list(segmenter.liver.sources),
            "labels": LABELS, "settings": segmenter.options}
    return read_summary(write_summary(output_dir, records, **info))


def _with_phases(entry: io.CaseEntry, segmenter: Segmenter, input_dir, resample_masks: bool) -> io.CaseEntry:
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
                  progress) -> dict:
    start = time.perf_counter()
    case = io.read_case(entry)
    given_liver = None if segmenter.liver is not None else case.liver
    result, _, _ = segmenter.segment_case(case, liver=given_liver, progress=progress, sources=entry.phases)
    labels_path = label_map_path(output, case.case_id, output_format)
    if output_format == "dicom_seg":
        files = {"labels": str(write_dicom_seg(result["labels"], case, entry.phases["pv"], labels_path))}
    else:
        files = {"labels": str(write_image(result["labels"], case, labels_path))}
    if save_probabilities:
        files["probabilities"] = str(write_image(result["prob"], case, probability_path(output, case.case_id)))
    roi = "none" if result["roi"] is None else ("liver model" if given_liver is None else "liver mask")
    info = {"roi": roi, **volumes_ml(result, case), "files": files, "scanner": case.metadata.get("scanner"),
            "absent_phases": segmenter.missing_phases(entry.phases)}
    if segmenter.liver is not None and case.liver is not None:
        info["liver_metrics"] = case_metrics(result["liver"], case.liver, case.spacing_zyx)
    info["seconds"] = time.perf_counter() - start
    if case.tumor is None:
        return {"case_id": case.case_id, "tumor_type": case.metadata.get("tumor_type"), **info}
    return evaluate_case(result["mask"], case.tumor, case.spacing_zyx, case.case_id, case.metadata.get("tumor_type"), **info)


def case_line(record: Mapping) -> str:
    """One line about a segmented case: volumes, Dice when scored, time."""
    parts = [record["case_id"], f"tumor {record['tumor_ml']:.1f} ml"]
    if "liver_ml" in record:
        parts.append(f"liver {record['liver_ml']:.1f} ml ({record['roi']})")
    if "liver_metrics" in record:
        parts.append(f"liver Dice {100 * record['liver_metrics']['dice']:.1f}%")
    if "metrics" in record:
        parts.append(f"tumor Dice {100 * record['metrics']['dice']:.1f}%")
    if record.get("absent_phases"):
        parts.append(f"without {', '.join(p.upper() for p in record['absent_phases'])}")
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
