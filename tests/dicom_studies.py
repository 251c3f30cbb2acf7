"""Synthetic DICOM studies for the tests, laid out as TCIA's HCC-TACE-Seg downloads are.

``<root>/<patient>/<study date>-<study description>-<uid tail>/<series number>.000000-<series description>-<uid tail>/1-NN.dcm``,
one CT image per file (pydicom), masks as DICOM-SEG objects (highdicom) in
their own series folder. Geometry is chosen by the caller, so tests can
compare what readers return with what was written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclasses.dataclass(frozen=True)
class Grid:
    """A CT series' voxel grid: shape (z, y, x), spacing (x, y, z) mm, origin (LPS mm), row and column directions."""

    shape: tuple[int, int, int] = (8, 32, 32)
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)
    origin: tuple[float, float, float] = (-12.0, -20.0, 40.0)
    row: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column: tuple[float, float, float] = (0.0, 1.0, 0.0)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.column)

    def position(self, z: int) -> np.ndarray:
        return np.asarray(self.origin) + z * self.spacing[2] * self.normal

    @property
    def direction(self) -> tuple[float, ...]:
        """SimpleITK's row-major direction matrix (columns: x, y, z axes)."""
        return tuple(np.stack([self.row, self.column, self.normal], axis=1).ravel().tolist())


@dataclasses.dataclass(frozen=True)
class Study:
    patient_id: str = "HCC_001"
    study_uid: str = dataclasses.field(default_factory=generate_uid)
    frame_of_reference_uid: str = dataclasses.field(default_factory=generate_uid)
    study_date: str = "19970912"
    description: str = "CT ABDOMEN LIVER 3 PHASE"

    def folder(self, root: Path) -> Path:
        date = f"{self.study_date[4:6]}-{self.study_date[6:]}-{self.study_date[:4]}"
        return Path(root) / self.patient_id / f"{date}-{self.description}-{self.study_uid[-5:]}"


def _series_folder(study: Study, root: Path, number: int, description: str, uid: str) -> Path:
    return study.folder(root) / f"{number}.000000-{description}-{uid[-5:]}"


def write_ct_series(root: Path, study: Study, hu: np.ndarray, grid: Grid, *, number: int, description: str,
                    acquisition_time: str | None = "101500", slice_order=None,
                    image_type=("ORIGINAL", "PRIMARY", "AXIAL"), series_uid: str | None = None,
                    acquisition_number: int = 1, first_instance: int = 1, position_decimals: int = 6) -> Path:
    """One CT image per file (int16 with rescale intercept -1024), as a scanner writes them; returns the folder.

    ``slice_order`` permutes which file holds which slice (file names say nothing about position);
    positions are written to ``position_decimals`` decimals (scanners round them).
    Slice z is instance ``first_instance + z``. Given an existing ``series_uid``, the slices join that
    series (several acquisitions in one series, as some scanners store all phases).
    """
    assert hu.shape == grid.shape
    uid = series_uid or generate_uid()
    folder = _series_folder(study, root, number, description, uid)
    folder.mkdir(parents=True, exist_ok=series_uid is not None)
    order = range(grid.shape[0]) if slice_order is None else slice_order
    for k, z in enumerate(order, first_instance - 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"1-{k + 1:02d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = study.patient_id, f"{study.patient_id}^", "", "M"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.study_uid, study.study_date, "101000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "1", "", "", study.description
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, description
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "TOSHIBA", "Aquilion"
        ds.ImageType = list(image_type)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study.frame_of_reference_uid, ""
        if acquisition_time is not None:
            ds.AcquisitionTime = ds.SeriesTime = acquisition_time
        ds.InstanceNumber, ds.AcquisitionNumber = first_instance + z, acquisition_number
        ds.ImagePositionPatient = [round(float(v), position_decimals) for v in grid.position(z)]
        ds.ImageOrientationPatient = [*map(float, grid.row), *map(float, grid.column)]
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = grid.spacing[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu[z].astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return folder


def write_seg(root: Path, study: Study, source_folder: Path, masks: dict[str, np.ndarray], *, number: int = 300,
              description: str = "Segmentation", first_instance: int = 1) -> Path:
    """A DICOM-SEG with one binary segment per ``masks`` entry (label -> (z, y, x) 0/1 on the source grid),
    drawn on the slices ``first_instance ... first_instance + z - 1`` of the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    depth = next(iter(masks.values())).shape[0]
    sources = sorted((d for d in map(pydicom.dcmread, source_folder.iterdir())
                      if first_instance <= int(d.InstanceNumber) < first_instance + depth), key=lambda d: int(d.InstanceNumber))
    pixels = np.stack([np.asarray(m, bool)[[int(d.InstanceNumber) - first_instance for d in sources]]
                       for m in masks.values()], axis=-1)
    segments = [hd.seg.SegmentDescription(i + 1, label, codes.SCT.AnatomicalStructure, codes.SCT.Organ, "MANUAL")
                for i, label in enumerate(masks)]
    uid = generate_uid()
    seg = hd.seg.Segmentation(sources, pixels, "BINARY", segments, uid, number, generate_uid(), 1, "hand", "hand", "1",
                              "1", series_description=description)
    folder = _series_folder(study, root, number, description, uid)
    folder.mkdir(parents=True)
    seg.save_as(folder / "1-1.dcm")
    return folder
