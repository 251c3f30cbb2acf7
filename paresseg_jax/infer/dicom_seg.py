"""A label map as a DICOM Segmentation (DICOM-SEG), the object radiology workstations and PACS display.

The SEG has two binary segments coded in SNOMED CT: 1 "Liver" (category
Anatomical Structure, type Liver; the whole liver, its tumors included, as in
the LiTS label convention) and 2 "Tumor" (category Morphologically Abnormal
Structure, type Neoplasm, in the liver). Its frames are the source series'
slices, so it shares their frame of reference and references every source
instance; a viewer overlays it on the PV series it was computed on.
Built with highdicom (optional extra ``.[dicom]``).

Real exports leave headers blank that the SEG copies (:func:`source_headers`):
an empty or absent SOP Class or Instance UID is taken from the file meta,
which holds the same value; an absent type 2 attribute of the patient and
study modules (which may be empty, never absent) is added empty; a type 1
UID with no source (study, series, frame of reference) is refused, naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import paresseg_jax
from paresseg_jax.atomic import atomic_path
from paresseg_jax.data import dicom
from paresseg_jax.errors import BadInputError, PareSegError

LIVER_SEGMENT = 1
TUMOR_SEGMENT = 2
SERIES_DESCRIPTION = "PA-ResSeg liver and tumor"
FROM_FILE_META = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}
MAY_BE_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                "AccessionNumber", "ReferringPhysicianName")  # type 2 in the Patient and General Study modules
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")  # type 1, copied into the SEG


def source_headers(pv_series_dir: str | os.PathLike) -> list:
    """The PV series' headers (sorted) completed for a SEG as the module says, or a ``BadInputError`` naming
    the first attribute that neither the slice nor its file meta gives. Cheap (headers only): callers run it
    before any work."""
    headers = dicom.series_headers(pv_series_dir)
    for header in headers:
        for name, meta_name in FROM_FILE_META.items():
            if not header.get(name):
                _require(getattr(header.get("file_meta"), meta_name, None) or None, name, header, " or its file meta")
                setattr(header, name, getattr(header.file_meta, meta_name))
        for name in MAY_BE_EMPTY:
            if name not in header:
                setattr(header, name, "")
        for name in REQUIRED:
            _require(header.get(name) or None, name, header, "")
    return headers


def _require(value, name: str, header, where: str) -> None:
    if value is None:
        raise BadInputError(f"{name} is empty or missing in {Path(header.filename).name}{where}; a DICOM-SEG must "
                            "carry it", path=Path(header.filename).parent,
                            fix="complete the series' headers (e.g. with dcmodify), or write NIfTI instead")


def _segment_descriptions(hd, codes):
    algorithm = hd.AlgorithmIdentificationSequence(
        name="PA-ResSeg (paresseg_jax)", family=codes.cid7162.ArtificialIntelligence, version=paresseg_jax.__version__
    )

    def describe(number, label, category, kind, **extra):
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, **extra)

    return [
        describe(LIVER_SEGMENT, "Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver),
        describe(TUMOR_SEGMENT, "Tumor", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm,
                 anatomic_regions=[codes.SCT.Liver]),
    ]


def write_dicom_seg(label_map: sitk.Image, pv_series_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                    series_description: str = SERIES_DESCRIPTION, series_number: int = 900) -> Path:
    """Write ``label_map`` (uint8: 0 background, 1 liver, 2 tumor, on the grid of the DICOM series in
    ``pv_series_dir``) as a DICOM-SEG referencing that series; returns ``out_path``.

    The label map must be in the series' geometry as SimpleITK reads it
    (``images.read_image(pv_series_dir)``); a grid that differs is an error, not
    a silent resampling.
    """
    hd = dicom.require("highdicom", "writing a DICOM-SEG")
    codes = dicom.require("pydicom.sr.codedict", "writing a DICOM-SEG").codes
    labels = sitk.GetArrayViewFromImage(label_map)
    values = np.unique(labels)
    if label_map.GetDimension() != 3 or not np.all(np.isin(values, (0, 1, 2))):
        raise PareSegError(f"the label map to write as DICOM-SEG is {label_map.GetDimension()}D with values "
                           f"{values[:10].tolist()}", fix="give a 3D label map with 0 background, 1 liver, 2 tumor")
    sources = source_headers(pv_series_dir)
    frames = labels[dicom.slice_indices_on_grid(sources, label_map)]
    segments = np.stack([frames >= LIVER_SEGMENT, frames == TUMOR_SEGMENT], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, codes),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="paresseg_jax",
        manufacturer_model_name="PA-ResSeg",
        software_versions=paresseg_jax.__version__,
        device_serial_number="none",
        series_description=series_description,
        omit_empty_frames=bool(segments.any()),  # a SEG needs one frame at least
    )
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return Path(out_path)
