"""DICOM studies (as TCIA downloads them) into a cohort of our layout with ``manifest.json``.

TCIA's HCC-TACE-Seg, the public multi-phase liver tumor collection, comes as
``patient/study/series/*.dcm``: each study holds several CT series (non-contrast,
arterial, portal-venous, delayed) and a DICOM-SEG with the liver and tumor
masks. The import reads every file's header (the folder names are not
trusted), groups series by study, and per study:

1. names each CT series' phase from its description (``layouts.PHASE_KEYWORDS``,
   whole words, overridable) and, for series the descriptions leave open,
   from acquisition times: those series, in time order, take the phases still
   free in protocol order (nc, art, pv, dl) when they are as many, and when
   the result agrees in time with the phases the descriptions named;
2. reads the SEG objects' segments by label (``SEGMENT_KEYWORDS``:
   "Liver" -> liver; "Mass", "Tumor", ... -> tumor; others such as "Portal
   vein" are left out) into masks on the PV grid (a SEG drawn on another
   phase's series is resampled geometrically, not registered); the liver mask
   covers the tumors, as in LiTS;
3. writes ``<case>/<phase>.nii.gz``, ``liver.nii.gz`` and ``tumor.nii.gz``.

``manifest.json`` lists the imported cases with their DICOM UIDs, and
``import_report.json`` says, per study, what was assigned and how, and
what could not be (a study without a PV series is not imported).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from paresseg_jax import names, preflight
from paresseg_jax.atomic import atomic_path, write_text
from paresseg_jax.data import dicom, layouts
from paresseg_jax.data.images import Geometry, resample_onto, write_image
from paresseg_jax.data.write_check import check_image_file
from paresseg_jax.errors import MissingInputError, PareSegError, error_line

REPORT = "import_report.json"
PROTOCOL_ORDER = ("nc", "art", "pv", "dl")  # the order a multiphase liver CT acquires its phases in
SEGMENT_KEYWORDS: dict[str, tuple[str, ...]] = {"liver": layouts.LIVER_LABEL_WORDS, "tumor": layouts.TUMOR_LABEL_WORDS}
MIN_SLICES = 3  # fewer slices is a scout or a single key image, not a volume


@dataclasses.dataclass(frozen=True)
class Slice:
    """One file of a series: where it lies along the slice normal and when it was acquired."""

    path: Path
    sop_uid: str
    position: float | None  # mm along the slice normal; None for objects without a plane (SEG)
    acquisition: int | None
    time_s: float | None
    instance: int


@dataclasses.dataclass
class Series:
    """One DICOM series as found on disk (or one acquisition of a series that holds several)."""

    uid: str
    modality: str
    description: str
    number: int | None
    image_type: tuple[str, ...]
    slices: list[Slice] = dataclasses.field(default_factory=list)
    part: str = ""

    @property
    def name(self) -> str:
        name = f"#{self.number} {self.description!r}" if self.number is not None else repr(self.description)
        return f"{name} ({self.part})" if self.part else name

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    @property
    def time_s(self) -> float | None:
        times = [s.time_s for s in self.slices if s.time_s is not None]
        return min(times) if times else None

    @property
    def sop_uids(self) -> set[str]:
        return {s.sop_uid for s in self.slices}


@dataclasses.dataclass
class Study:
    uid: str
    patient_id: str
    date: str
    scanner: str | None
    series: dict[str, Series] = dataclasses.field(default_factory=dict)


def _seconds(header) -> float | None:
    """Acquisition (else content, else series) time of day in seconds, from DICOM TM ``HHMMSS.ffffff``."""
    for keyword in ("AcquisitionTime", "ContentTime", "SeriesTime"):
        value = str(header.get(keyword, "") or "").strip()
        if re.fullmatch(r"\d{2,6}(\.\d+)?", value):
            whole, _, fraction = value.partition(".")
            whole = whole.ljust(6, "0")
            return int(whole[:2]) * 3600 + int(whole[2:4]) * 60 + int(whole[4:6]) + float(f"0.{fraction or 0}")
    return None


def _slice(path: Path, header) -> Slice:
    has_plane = "ImagePositionPatient" in header and "ImageOrientationPatient" in header
    position = float(np.dot(dicom.slice_normal(header), np.asarray(header.ImagePositionPatient, float))) if has_plane else None
    acquisition = header.get("AcquisitionNumber")
    return Slice(path, str(header.get("SOPInstanceUID", "")), position,
                 None if acquisition in (None, "") else int(acquisition), _seconds(header),
                 int(header.get("InstanceNumber") or 0))


def scan(input_dir: str | os.PathLike, *, progress: bool = True) -> list[Study]:
    """Every study under ``input_dir`` with its series, from the files' headers (files that are not DICOM are skipped).

    A series whose slices repeat positions (several acquisitions, e.g. all
    contrast phases, stored as one series) is split into one series per
    acquisition (``split_acquisitions``).
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise MissingInputError("DICOM folder does not exist", path=root, fix="check the path")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    studies: dict[str, Study] = {}
    for path in tqdm(files, desc="read DICOM headers", unit="file", disable=not progress):
        header = dicom.read_header(path)
        if header is None or "SeriesInstanceUID" not in header or "StudyInstanceUID" not in header:
            continue
        study = studies.get(header.StudyInstanceUID)
        if study is None:
            scanner = " ".join(str(header.get(k, "") or "") for k in ("Manufacturer", "ManufacturerModelName")).strip()
            study = studies[header.StudyInstanceUID] = Study(
                header.StudyInstanceUID, str(header.get("PatientID", "") or "unknown"),
                str(header.get("StudyDate", "") or ""), scanner or None)
        series = study.series.get(header.SeriesInstanceUID)
        if series is None:
            number = header.get("SeriesNumber")
            series = study.series[header.SeriesInstanceUID] = Series(
                header.SeriesInstanceUID, str(header.get("Modality", "")), str(header.get("SeriesDescription", "") or ""),
                None if number in (None, "") else int(number),
                tuple(str(t).upper() for t in (header.get("ImageType") or ())))
        series.slices.append(_slice(path, header))
    return sorted(studies.values(), key=lambda s: (s.patient_id, s.date, s.uid))


def split_acquisitions(series: Series) -> list[Series]:
    """The series, or one series per acquisition when its slices repeat positions.

    Slices are taken in acquisition order (AcquisitionNumber, time, instance
    number) and a new acquisition starts where a position comes again.
    """
    positions = [s.position for s in series.slices]
    if None in positions or len({round(p, 2) for p in positions}) == len(positions):
        return [series]
    stacks, seen = [[]], set()
    for item in sorted(series.slices, key=lambda s: (s.acquisition or 0, s.time_s or 0.0, s.instance)):
        if round(item.position, 2) in seen:
            stacks.append([])
            seen = set()
        stacks[-1].append(item)
        seen.add(round(item.position, 2))
    return [dataclasses.replace(series, slices=stack, part=f"acquisition {k + 1} of {len(stacks)}")
            for k, stack in enumerate(stacks)]


def _is_volume(series: Series) -> bool:
    return series.modality == "CT" and "LOCALIZER" not in series.image_type and len(series.slices) >= MIN_SLICES


def assign_phases(series: Sequence[Series], keywords: Mapping[str, Iterable[str]] = layouts.PHASE_KEYWORDS,
                  preferred: Iterable[str] = ()) -> tuple[dict[str, Series], list[str]]:
    """``(phase -> series, notes)`` for a study's CT volumes: by description, then by acquisition time.

    Several series named for one phase (e.g. thin and thick reconstructions):
    the one holding instances in ``preferred`` (SOP instance UIDs a SEG was
    drawn on), else the one with the most slices; the notes say which were
    left out.
    """
    volumes = [s for s in series if _is_volume(s)]
    notes, named, open_ = [], defaultdict(list), []
    for s in volumes:
        found = layouts.phases_named(s.description, keywords)
        if len(found) == 1:
            named[found[0]].append(s)
        else:
            open_.append(s)
            if found:
                notes.append(f"series {s.name} names several phases {found}; decided by acquisition time")
    preferred = set(preferred)
    chosen = {}
    for phase, candidates in named.items():
        best = max(candidates, key=lambda s: (bool(s.sop_uids & preferred), len(s.slices)))
        chosen[phase] = best
        notes += [f"series {s.name} also looks like {phase}; used {best.name}" for s in candidates if s is not best]
    free = [p for p in PROTOCOL_ORDER if p not in chosen]
    if open_:
        timed = sorted((s for s in open_ if s.time_s is not None), key=lambda s: s.time_s)
        by_time = dict(zip(free, timed))
        order = sorted({**chosen, **by_time}.items(), key=lambda item: PROTOCOL_ORDER.index(item[0]))
        times = [s.time_s for _, s in order]
        if len(timed) != len(open_) or len(timed) != len(free):
            notes.append(f"series {[s.name for s in open_]} not assigned: their descriptions name no phase and "
                         f"{len(timed)} with acquisition times cannot fill the free phases {free} one to one")
        elif None in times or times != sorted(times):
            notes.append(f"series {[s.name for s in open_]} not assigned: by acquisition time they would be "
                         f"{[p for p in by_time]}, which contradicts the phases named by description")
        else:
            chosen.update(by_time)
            notes += [f"series {s.name} assigned {p} by acquisition time" for p, s in by_time.items()]
    return chosen, notes


def _segment_masks(seg_files: Sequence[Path], pv: sitk.Image, segment_keywords: Mapping[str, Iterable[str]]
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({'liver': mask, 'tumor': mask} on the PV grid, notes)`` from SEG files (none: no masks).

    A SEG that cannot be read or does not overlap PV is reported and left out.
    """
    masks, notes = {}, []
    for path in seg_files:
        try:
            found, left_out = _read_seg(path, pv, segment_keywords)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:  # written by another tool
            notes.append(f"SEG {path} not used ({type(error).__name__}: {error_line(error)})")
            continue
        notes += [f"SEG segment {label!r} left out (neither liver nor tumor)" for label in left_out]
        for kind, mask in found.items():
            masks[kind] = masks[kind] | mask if kind in masks else mask
    if "liver" in masks and "tumor" in masks:
        masks["liver"] = masks["liver"] | masks["tumor"]  # the liver mask covers its tumors
    return masks, notes


def _read_seg(path: Path, pv: sitk.Image, segment_keywords) -> tuple[dict[str, np.ndarray], list[str]]:
    """The liver and tumor masks of one SEG on the PV grid, and the labels of the segments left out."""
    hd = dicom.require("highdicom", "reading DICOM-SEG masks")
    seg = hd.seg.segread(path)
    numbers, left_out = defaultdict(list), []
    for segment in seg.SegmentSequence:
        label = str(segment.SegmentLabel)
        kind = next((k for k in ("tumor", "liver") if layouts.matches(label, segment_keywords.get(k, ()))), None)
        if kind is None:
            left_out.append(label)
        else:
            numbers[kind].append(int(segment.SegmentNumber))
    masks = {}
    for kind, segment_numbers in numbers.items():
        volume = seg.get_volume(segment_numbers=segment_numbers, combine_segments=False)
        image = dicom.volume_to_image(volume.array.any(axis=-1).astype(np.uint8), volume.affine)
        masks[kind] = sitk.GetArrayFromImage(resample_onto(image, pv, path, nearest=True))
    return masks, left_out


def _case_ids(studies: Sequence[Study]) -> dict[str, str]:
    """Study UID -> case id: the patient id, with the study date (and a count) when a patient has several."""
    per_patient = defaultdict(list)
    for study in studies:
        per_patient[study.patient_id].append(study)
    ids = {}
    for patient, own in per_patient.items():
        for k, study in enumerate(own):
            name = patient if len(own) == 1 else f"{patient}_{study.date or k}"
            name = names.renamed(re.sub(r"[^A-Za-z0-9._-]+", "_", name))  # a PatientID of '.' is no folder name
            while name in ids.values():
                name = f"{name}_{k}"
            ids[study.uid] = name
    return ids


def _import_study(study: Study, case_id: str, output: Path, keywords, segment_keywords,
                  require_seg: bool, allow_gaps: bool) -> tuple[dict | None, dict]:
    """Write one study's case folder; ``(manifest record or None, report entry)``."""
    segs = [f for s in study.series.values() if s.modality == "SEG" for f in s.files]
    referenced = {instance.ReferencedSOPInstanceUID for path in segs
                  for series in dicom.read_header(path).get("ReferencedSeriesSequence", [])
                  for instance in series.get("ReferencedInstanceSequence", [])}
    candidates = [part for s in study.series.values() if s.modality != "SEG" for part in split_acquisitions(s)]
    phases, notes = assign_phases(candidates, keywords, preferred=referenced)
    report = {"patient_id": study.patient_id, "study_instance_uid": study.uid, "study_date": study.date,
              "phases": {p: {"series": s.name, "series_instance_uid": s.uid} for p, s in phases.items()},
              "notes": notes,
              "unassigned_series": [s.name for s in candidates if not any(s is c for c in phases.values())]}
    if "pv" not in phases or (require_seg and not segs):
        report["imported"] = None
        notes.append("no portal-venous series: study not imported (name it with a phase keyword for pv)"
                     if "pv" not in phases else "no DICOM-SEG: study not imported (masks required)")
        return None, report
    if referenced and not phases["pv"].sop_uids & referenced:
        drawn_on = [s.name for s in candidates if s.sop_uids & referenced]
        notes.append(f"SEG drawn on series {drawn_on}, not on PV: masks moved onto the PV grid by geometry alone "
                     "(no registration)")
    try:
        with atomic_path(output / case_id, directory=True) as folder:
            images = {p: dicom.read_series_image(s.files, allow_gaps) for p, s in phases.items()}
            for phase, image in images.items():
                sitk.WriteImage(image, str(folder / f"{phase}.nii.gz"), useCompression=True)
                check_image_file(folder / f"{phase}.nii.gz", output / case_id / f"{phase}.nii.gz",
                                 image.GetNumberOfPixels() * image.GetSizeOfPixelComponent())
            masks, seg_notes = _segment_masks(segs, images["pv"], segment_keywords)
            notes += seg_notes
            for kind, mask in masks.items():
                write_image(mask, Geometry.of(images["pv"]), folder / f"{kind}.nii.gz")
    except PareSegError as error:  # this study's files: the others are still imported
        notes.append(f"study not imported: {error}")
        report["imported"], report["error"] = None, error.message
        return None, report
    if not segs:
        notes.append("no DICOM-SEG in the study: no masks")
    notes += [f"no {kind} segment found" for kind in layouts.MASK_NAMES if segs and kind not in masks]
    report["imported"] = case_id
    report["masks"] = sorted(masks)
    record = {"case_id": case_id, "tumor_type": None, "scanner": study.scanner, "patient_id": study.patient_id,
              "study_instance_uid": study.uid, "study_date": study.date,
              "series": {p: {"series_instance_uid": s.uid, "description": s.description, "part": s.part,
                             "folders": sorted({str(f.parent.absolute()) for f in s.files})}
                         for p, s in phases.items()}}
    return record, report


def import_dicom(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                 phase_keywords: Mapping[str, Iterable[str]] | None = None,
                 segment_keywords: Mapping[str, Iterable[str]] | None = None, require_seg: bool = False,
                 allow_gaps: bool = False, progress: bool = True) -> dict:
    """Import every study under ``input_dir`` into ``output_dir`` (our layout, ``manifest.json``,
    ``import_report.json``); returns the report.

    ``phase_keywords`` / ``segment_keywords`` replace the default phrases of
    the phases / mask kinds they name (the others keep theirs). With
    ``require_seg``, studies without a DICOM-SEG (e.g. follow-up scans) are
    reported and left out, for a training cohort. A series with a missing slice
    fails its study (``report["failed"]`` counts them) unless ``allow_gaps``
    (then resampled onto even slices, with a warning).
    """
    keywords = {**layouts.PHASE_KEYWORDS, **{k: tuple(v) for k, v in (phase_keywords or {}).items()}}
    unknown = sorted(set(keywords) - set(layouts.PHASES))
    if unknown:
        raise PareSegError(f"phase keywords given for unknown phases {unknown}", fix=f"use phases from {layouts.PHASES}")
    seg_keywords = {**SEGMENT_KEYWORDS, **{k: tuple(v) for k, v in (segment_keywords or {}).items()}}
    unknown = sorted(set(seg_keywords) - set(layouts.MASK_NAMES))
    if unknown:
        raise PareSegError(f"segment keywords given for unknown masks {unknown}", fix="use liver and tumor")
    studies = scan(input_dir, progress=progress)
    if not studies:
        raise PareSegError("holds no DICOM studies", path=input_dir, fix="give the folder TCIA's download wrote")
    if any(s.modality == "SEG" for study in studies for s in study.series.values()):
        dicom.require("highdicom", "reading DICOM-SEG masks")  # before any study, not once per study
    output = Path(output_dir)
    ids = _case_ids(studies)
    outputs = [(output / name, f"the case folder of study {uid}") for uid, name in ids.items()]
    preflight.outputs_apart(outputs, [input_dir], whole=True)
    preflight.outputs_apart([(output / layouts.MANIFEST, "the manifest"), (output / REPORT, "the report")], [input_dir])
    records, entries = [], []
    for study in tqdm(studies, desc="import studies", unit="study", disable=not progress):
        record, entry = _import_study(study, ids[study.uid], output, keywords, seg_keywords, require_seg, allow_gaps)
        entries.append(entry)
        if record is not None:
            records.append(record)
    report = {"input": str(Path(input_dir).absolute()), "studies": len(studies), "imported": len(records),
              "failed": sum("error" in entry for entry in entries), "cases": entries}
    if records:
        layouts.write_manifest(output, records)
    write_text(output / REPORT, json.dumps(report, indent=1))
    return report
