"""Reading and writing multi-phase CT cases with SimpleITK.

A ``Case`` holds every phase as a numpy ``(z, y, x)`` float32 volume in HU on
the PV grid, the liver and tumor masks (uint8 0/1, or None) in the same grid,
and the PV geometry in SimpleITK ``(x, y, z)`` order. Phases acquired on
another grid are resampled onto PV when read, so everything downstream works
voxel by voxel; a phase covering PV only partly is reported, and refused
below ``MIN_PHASE_COVERAGE``. A mask on another grid than PV is refused
unless resampling is asked for (``resample_masks``): resampling a mask moves
the metrics and the ROI, so it must be a choice, not an accident.

Reading cannot lie: NIfTI voxels are read with nibabel, which keeps NaN
(SimpleITK's NIfTI reader turns them into 0) and refuses a gzip stream or a
voxel block shorter than the header says (SimpleITK fills the missing slices
with 0); NaN or infinite voxels are refused in every format.

Cohort layouts (``read_cohort`` detects which one a folder holds):

* a ``manifest.json`` (our layout, and any other layout through explicit
  file paths; see ``read_manifest``);
* an nnU-Net raw dataset or an MSD task (``dataset.json``, ``imagesTr/``; see
  ``layouts``);
* LiTS: ``volume-N.nii`` with ``segmentation-N.nii`` (labels 0 background,
  1 liver, 2 tumor) as a single-phase (PV) cohort;
* case folders holding ``pv.nii.gz`` (and ``art``, ``nc``, ``dl``,
  ``liver``, ``tumor``) without a manifest (no tumor type or scanner known).

An image file may be NIfTI, MHA/MHD or NRRD; a folder stands for a DICOM series.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import logging

import numpy as np
import SimpleITK as sitk

from paresseg_jax import names
from paresseg_jax.atomic import atomic_path, write_text
from paresseg_jax.data import declared_size, schema, series_check
from paresseg_jax.data.write_check import check_image_file
from paresseg_jax.errors import BadInputError, MissingInputError, OutputError, error_line, read_json

PHASES = ("pv", "art", "nc", "dl")
MASK_NAMES = ("liver", "tumor")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
MANIFEST = "manifest.json"
LITS_LABELS = {"liver_labels": (1, 2), "tumor_labels": (2,)}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GEOMETRY_ATOL = 1e-4
# Fraction of the PV image's physical extent another phase must cover: below WARN a warning says by how
# much, below MIN the phase is refused (the uncovered part would be filled with air and fed to the model).
PHASE_COVERAGE_WARN = 0.99
MIN_PHASE_COVERAGE = 0.5

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image in SimpleITK (x, y, z) order: spacing (mm), origin (mm), direction (row-major 3x3)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, source: Any) -> "Geometry":
        """Geometry of a ``Geometry``, ``Case``, SimpleITK image or mapping with spacing/origin/direction."""
        if isinstance(source, sitk.Image):
            return cls(source.GetSpacing(), source.GetOrigin(), source.GetDirection())
        if isinstance(source, Mapping):
            spacing, origin, direction = source["spacing"], source["origin"], source["direction"]
        else:
            spacing, origin, direction = source.spacing, source.origin, source.direction
        return cls(tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction)))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclasses.dataclass
class Case:
    """One multi-phase study on the PV grid: images in HU, masks 0/1, PV geometry, metadata.

    ``metadata`` carries at least ``case_id``, ``tumor_type`` and ``scanner``
    (None when unknown).
    """

    phases: dict[str, np.ndarray]
    liver: np.ndarray | None
    tumor: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    metadata: dict

    @property
    def case_id(self) -> str:
        return self.metadata["case_id"]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy array order (z, y, x), as metrics and filters on the arrays need it."""
        return tuple(reversed(self.spacing))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.phases["pv"].shape)

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self)


@dataclasses.dataclass(frozen=True)
class CaseEntry:
    """Where one case's files are, read only when ``read_case`` is called (cohorts stay lazy).

    ``segmentation`` is a label map from which the liver and tumor masks are
    taken by label value (``liver_labels``, ``tumor_labels``), as in LiTS.
    ``resample_masks`` allows masks on another grid than PV (resampled onto it).
    ``liver_label``: ``liver`` is a multi-label map (e.g. TotalSegmentator's,
    liver 5) whose voxels of this value are the liver; None: a 0/1 mask.
    """

    case_id: str
    phases: Mapping[str, Path]
    liver: Path | None = None
    tumor: Path | None = None
    segmentation: Path | None = None
    liver_labels: tuple[int, ...] = (1,)
    tumor_labels: tuple[int, ...] = (1,)
    metadata: Mapping = dataclasses.field(default_factory=dict)
    resample_masks: bool = False
    liver_label: int | None = None


# ----------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D image file (NIfTI, MHA, NRRD, ...) or a DICOM series folder, checking it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError("image does not exist", path=path, fix="check the path")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        elif path.name.lower().endswith(NIFTI_SUFFIXES):
            image = _read_nifti(path)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise BadInputError(f"cannot read image ({error_line(error)})", path=path,
                            fix="is it a whole NIfTI/MHA/NRRD file or a DICOM series folder?") from None
    return _checked_volume(image, path)


def read_image_header(path: str | os.PathLike, allow_gaps: bool = False) -> None:
    """Check, without reading its voxels, that an image file exists and its header is a 3D scalar volume.

    Launchers call it on every input before any work, so a wrong path or file fails in a second.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError("image does not exist", path=path, fix="check the path")
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise BadInputError("folder holds no DICOM series", path=path,
                                fix="give an image file or a folder of DICOM slices")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
        series_check.check_spacing(series_check.slice_positions(files, path), path, allow_gaps)
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise BadInputError(f"cannot read image header ({error_line(error)})", path=path,
                            fix="is it a NIfTI/MHA/NRRD file or a DICOM series folder?") from None
    _check_volume_shape(reader.GetNumberOfComponents(), reader.GetDimension(), reader.GetSize(), path)
    declared_size.check(path, reader.GetSize(), reader.GetPixelID(), reader.GetNumberOfComponents())


def _checked_volume(image: sitk.Image, path: Path) -> sitk.Image:
    _check_volume_shape(image.GetNumberOfComponentsPerPixel(), image.GetDimension(), image.GetSize(), path)
    return image[:, :, :, 0] if image.GetDimension() == 4 else image


def _check_volume_shape(components: int, dimension: int, size: Sequence[int], path: Path) -> None:
    if components != 1:
        raise BadInputError(f"image has {components} components per voxel", path=path,
                            fix="expected a scalar CT volume or mask")
    if dimension == 4 and size[3] == 1:
        dimension, size = 3, size[:3]
    if dimension != 3 or size[2] < 2:
        raise BadInputError(f"image is {dimension}D with size {tuple(size)}", path=path,
                            fix="expected a 3D volume with several slices")


def _read_nifti(path: Path) -> sitk.Image:
    """A NIfTI file: geometry from SimpleITK's header reading, voxels from nibabel.

    The two index the voxel block the same way (neither reorients data), so
    the transpose of nibabel's ``(x, y, z)`` array is SimpleITK's ``(z, y, x)``.
    nibabel reads the whole gzip stream (its CRC and length) and the number of
    bytes the header promises, and keeps NaN.
    """
    import nibabel

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    _check_volume_shape(reader.GetNumberOfComponents(), reader.GetDimension(), reader.GetSize(), path)
    declared_size.check(path, reader.GetSize(), reader.GetPixelID(), reader.GetNumberOfComponents())
    try:
        voxels = np.asanyarray(nibabel.load(path).dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise BadInputError(f"image is damaged or truncated ({type(error).__name__}: {error_line(error)})",
                            path=path, fix="copy or export it again; the file holds fewer voxels than its header "
                            "promises") from None
    size = tuple(reader.GetSize()[:3])
    voxels = voxels.reshape(size, order="F") if voxels.size == int(np.prod(size)) else None
    if voxels is None:
        raise BadInputError(f"image voxel data does not match its header size {size}", path=path,
                            fix="export it again")
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.T))
    dimension = reader.GetDimension()
    image.SetSpacing(reader.GetSpacing()[:3])
    image.SetOrigin(reader.GetOrigin()[:3])
    direction = np.reshape(reader.GetDirection(), (dimension, dimension))[:3, :3]
    image.SetDirection(tuple(direction.ravel()))
    return image


def _read_dicom_series(folder: Path, allow_gaps: bool = False) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise BadInputError("folder holds no DICOM series", path=folder,
                            fix="give an image file or a folder of DICOM slices")
    if len(series) > 1:
        raise BadInputError(f"folder holds {len(series)} DICOM series {list(series)}", path=folder,
                            fix="put each series in its own folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    positions = series_check.slice_positions(files, folder)
    even_spacing = series_check.check_spacing(positions, folder, allow_gaps)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    return image if even_spacing is None else series_check.even_slices(image, positions, even_spacing)


def image_array(image: sitk.Image, path: str | os.PathLike, dtype=np.float32) -> np.ndarray:
    """The (z, y, x) voxel array of an image, refusing NaN or infinite voxels."""
    array = sitk.GetArrayFromImage(image).astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise BadInputError(f"image has {bad} NaN or infinite voxels", path=path,
                            fix="fix or fill them (e.g. with -1024 HU) before use")
    return array


def same_grid(a: Geometry, size_a: Sequence[int], b: Geometry, size_b: Sequence[int]) -> bool:
    return (
        tuple(size_a) == tuple(size_b)
        and np.allclose(a.spacing, b.spacing, atol=_GEOMETRY_ATOL)
        and np.allclose(a.origin, b.origin, atol=_GEOMETRY_ATOL)
        and np.allclose(a.direction, b.direction, atol=_GEOMETRY_ATOL)
    )


def _physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min, max corner) of an image's voxel centers +- half a voxel."""
    size = np.array(image.GetSize(), float)
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1).T
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    return points.min(0), points.max(0)


def resample_onto(image: sitk.Image, reference: sitk.Image, path, *, nearest: bool) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference`` (linear for images, nearest for masks).

    Voxels of the reference outside the image get the image's minimum (air)
    for images and 0 for masks. Images that do not overlap are an error; an
    image covering less than ``PHASE_COVERAGE_WARN`` of the reference's
    physical box is reported, less than ``MIN_PHASE_COVERAGE`` refused.
    """
    if same_grid(Geometry.of(image), image.GetSize(), Geometry.of(reference), reference.GetSize()):
        return image
    lo_a, hi_a = _physical_box(image)
    lo_b, hi_b = _physical_box(reference)
    overlap = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None)
    if np.any(overlap <= 0):
        raise BadInputError(
            f"image (physical extent {lo_a.round(1).tolist()}..{hi_a.round(1).tolist()} mm) does not overlap "
            f"the PV image ({lo_b.round(1).tolist()}..{hi_b.round(1).tolist()} mm)", path=path,
            fix="check that both belong to the same study and that their origin/direction headers are right")
    coverage = float(np.prod(overlap) / np.prod(hi_b - lo_b))
    if coverage < MIN_PHASE_COVERAGE:
        raise BadInputError(
            f"image covers only {coverage:.0%} of the PV image's extent (at least {MIN_PHASE_COVERAGE:.0%} needed; "
            "the rest would be filled with air)", path=path,
            fix="check that both belong to the same study and that their origin/direction headers are right")
    if coverage < PHASE_COVERAGE_WARN:
        log.warning("%s covers %.1f%% of the PV image's extent; the other %.1f%% is filled with air",
                    path, 100 * coverage, 100 * (1 - coverage))
    if nearest:
        return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())
    image = sitk.Cast(image, sitk.sitkFloat32)
    fill = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)


def write_image(array: np.ndarray, geometry: Any, path: str | os.PathLike) -> Path:
    """Write a (z, y, x) array as an image (NIfTI by suffix) with the given geometry (a Case, Geometry or meta dict)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_image({path}): expected a 3D (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    path = Path(path)
    image = Geometry.of(geometry).apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as error:  # ITK's writers report a failed write as a RuntimeError
            raise OutputError(f"cannot be written ({error_line(error)})", path=path,
                              fix="check the disk (space, quota, permissions), or write elsewhere") from None
        check_image_file(tmp, path, array.nbytes)
    return path


# ----------------------------------------------------------------------------- masks


def mask_from_labels(labels: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """Binary uint8 mask of the voxels whose label is in ``wanted``."""
    return np.isin(labels, np.asarray(wanted)).astype(np.uint8)


def check_binary_mask(labels: np.ndarray, path, name: str) -> np.ndarray:
    """A 0/1 mask as uint8; any other label values are an error that says how to map them."""
    values = np.unique(labels)
    if not np.all(np.isin(values, (0, 1))):
        shown = values[:10].tolist()
        raise BadInputError(
            f"{name} mask has labels {shown}{'...' if values.size > 10 else ''}; expected 0/1", path=path,
            fix="if it is a label map, list it in manifest.json as \"segmentation\" with \"liver_labels\" and "
                "\"tumor_labels\" (LiTS: liver_labels [1, 2], tumor_labels [2]); if it is 0/255, divide it by 255")
    return labels.astype(np.uint8)


def liver_from_labels(labels: np.ndarray, path, liver_label: int | None = None) -> np.ndarray:
    """The liver of a liver file: a 0/1 mask, or the ``liver_label`` voxels of a multi-label map (refused when
    it has none: a wrong label would silently give an empty ROI)."""
    if liver_label is None:
        return check_binary_mask(labels, path, "liver")
    if not np.any(labels == liver_label):
        values = np.unique(labels)
        raise BadInputError(f"liver label map has no voxel of label {liver_label} (its labels: "
                            f"{values[:10].tolist()}{'...' if values.size > 10 else ''})", path=path,
                            fix="give the liver's value in this map (TotalSegmentator: 5) as --liver_label")
    return mask_from_labels(labels, (liver_label,))


def read_mask(path: str | os.PathLike, case: Case, name: str = "liver", *, resample: bool = False) -> np.ndarray:
    """A 0/1 mask file (e.g. a liver model's prediction) on the case's PV grid, uint8.

    A mask on another grid is refused unless ``resample``.
    """
    return check_binary_mask(read_labels(path, case, name, resample=resample), path, name)


def read_labels(path: str | os.PathLike, case: Case, name: str = "mask", *, resample: bool = False) -> np.ndarray:
    """A mask or label map file on the case's PV grid, int64 labels (another grid only with ``resample``)."""
    reference = case.geometry.apply_to(sitk.Image(list(reversed(case.shape)), sitk.sitkUInt8))
    return _read_labels(Path(path), reference, resample, name)


def _read_labels(path: Path, reference: sitk.Image, resample: bool, name: str) -> np.ndarray:
    return labels_on_grid(read_image(path), reference, path, name, resample=resample)


def labels_on_grid(image: sitk.Image, reference: sitk.Image, source: Any, name: str = "mask", *,
                   resample: bool = False) -> np.ndarray:
    """Integer labels of a mask image on the grid of ``reference``, int64 (z, y, x); a mask on another grid is
    refused unless ``resample`` (then nearest neighbour)."""
    if not resample and not same_grid(Geometry.of(image), image.GetSize(), Geometry.of(reference), reference.GetSize()):
        raise BadInputError(
            f"{name} mask is on another grid (size {image.GetSize()}, spacing {_rounded(image.GetSpacing())}, origin "
            f"{_rounded(image.GetOrigin())}) than the PV image (size {reference.GetSize()}, spacing "
            f"{_rounded(reference.GetSpacing())}, origin {_rounded(reference.GetOrigin())})", path=source,
            fix="give the mask on the PV grid, or allow resampling it (--resample_masks, or \"resample_masks\": true "
                "in manifest.json)")
    image = resample_onto(image, reference, source, nearest=True)
    labels = image_array(image, source, dtype=np.float64)
    if not np.array_equal(labels, np.round(labels)):
        raise BadInputError("mask has non-integer values", path=source, fix="expected integer labels (0/1 or a label map)")
    return labels.astype(np.int64)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 3) for v in values]


# ----------------------------------------------------------------------------- cases


def read_case(source: CaseEntry | str | os.PathLike) -> Case:
    """Read a case from a ``CaseEntry`` or from a case folder of our layout.

    A case folder's metadata comes from the ``manifest.json`` beside it when
    there is one (matched by folder name), else only ``case_id`` is known.
    """
    if not isinstance(source, CaseEntry):
        folder = Path(source)
        if not folder.is_dir():
            raise MissingInputError("case folder does not exist", path=folder, fix="check the path")
        source = _entry_from_manifest(folder) or _entry_from_folder(folder, folder.name, {})
    if "pv" not in source.phases:
        raise BadInputError(f"case {source.case_id!r} has no PV phase (phases: {sorted(source.phases)})",
                            fix="PV is the target phase and is required")
    pv_image = read_image(source.phases["pv"])
    phases = phases_on_pv_grid({name: pv_image if name == "pv" else path for name, path in source.phases.items()},
                               source.phases)
    liver = tumor = None
    if source.segmentation is not None:
        labels = _read_labels(source.segmentation, pv_image, source.resample_masks, "segmentation")
        known = set(source.liver_labels) | set(source.tumor_labels) | {0}
        unknown = sorted(set(np.unique(labels).tolist()) - known)
        if unknown:
            raise BadInputError(
                f"segmentation has labels {unknown} that are neither background (0) nor listed in liver_labels "
                f"{list(source.liver_labels)} / tumor_labels {list(source.tumor_labels)}", path=source.segmentation,
                fix="add them to one of those lists")
        liver = mask_from_labels(labels, source.liver_labels)
        tumor = mask_from_labels(labels, source.tumor_labels)
    if source.liver is not None:
        liver = liver_from_labels(_read_labels(source.liver, pv_image, source.resample_masks, "liver"), source.liver,
                                  source.liver_label)
    if source.tumor is not None:
        tumor = check_binary_mask(_read_labels(source.tumor, pv_image, source.resample_masks, "tumor"), source.tumor, "tumor")
    metadata = {"tumor_type": None, "scanner": None, **dict(source.metadata), "case_id": source.case_id}
    geometry = Geometry.of(pv_image)
    return Case(phases, liver, tumor, geometry.spacing, geometry.origin, geometry.direction, metadata)


def phases_on_pv_grid(images: Mapping[str, sitk.Image | str | os.PathLike], sources: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every phase as a ``(z, y, x)`` float32 HU array on the PV grid (the others resampled onto it).

    ``images`` maps phase names ('pv' required) to SimpleITK images or files,
    read one at a time; ``sources`` names each in error messages.
    """
    def image(name):
        value = images[name]
        return value if isinstance(value, sitk.Image) else read_image(value)

    pv_image = image("pv")
    phases = {"pv": image_array(pv_image, sources["pv"])}
    for name in images:
        if name != "pv":
            phases[name] = image_array(resample_onto(image(name), pv_image, sources[name], nearest=False), sources[name])
    return phases


def write_case(case: Case, folder: str | os.PathLike) -> Path:
    """Write a case in our layout (``<phase>.nii.gz``, ``liver.nii.gz``, ``tumor.nii.gz``) in PV geometry."""
    folder = Path(folder)
    for name, array in case.phases.items():
        write_image(np.asarray(array, np.float32), case, folder / f"{name}.nii.gz")
    for name in MASK_NAMES:
        mask = getattr(case, name)
        if mask is not None:
            write_image(np.asarray(mask, np.uint8), case, folder / f"{name}.nii.gz")
    return folder


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` with any image suffix, or a ``folder/stem/`` DICOM folder."""
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    if (folder / stem).is_dir():
        return folder / stem
    return None


def _entry_from_folder(folder: Path, case_id: str, metadata: Mapping) -> CaseEntry:
    if not folder.is_dir():
        raise MissingInputError(f"case folder (case {case_id!r}) does not exist", path=folder, fix="check the path")
    phases = {p: path for p in PHASES if (path := find_image(folder, p)) is not None}
    if "pv" not in phases:
        raise MissingInputError("case folder has no pv image", path=folder,
                                fix="add pv.nii.gz, pv.mha, pv.nrrd or a pv/ DICOM folder")
    return CaseEntry(case_id, phases, find_image(folder, "liver"), find_image(folder, "tumor"), metadata=dict(metadata))


def _entry_from_manifest(folder: Path) -> CaseEntry | None:
    manifest = folder.parent / MANIFEST
    if not manifest.is_file():
        return None
    for entry in read_manifest(manifest):
        if entry.phases.get("pv") is not None and Path(entry.phases["pv"]).parent.resolve() == folder.resolve():
            return entry
    return None


# ----------------------------------------------------------------------------- cohorts


def read_manifest(path: str | os.PathLike) -> list[CaseEntry]:
    """Case entries of a manifest.json (paths relative to the manifest's folder), every file checked to exist.

    Format: ``{"cases": [{"case_id": ..., "tumor_type": ..., "scanner": ...,
    "split": ..., <files>}, ...]}``. Files are either a case folder of our
    layout (``"folder"``, default the case id) or explicit paths:
    ``"phases": {"pv": ..., "art": ...}`` plus ``"liver"``/``"tumor"`` masks or a
    ``"segmentation"`` label map with ``"liver_labels"`` and ``"tumor_labels"``.
    ``"resample_masks": true`` (top level or per case) allows masks on another
    grid than PV. Any other key is kept as metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("manifest does not exist", path=path, fix="check the path")
    usage = 'expected JSON {"cases": [{"case_id": ...}, ...]}'
    content = read_json(path, usage, what="manifest")
    schema.check_manifest(content, path, PHASES)
    records = content["cases"]
    resample_default = content.get("resample_masks", False)
    root = path.parent
    entries, seen = [], set()
    for i, record in enumerate(records):
        case_id = names.file_name(str(record["case_id"]), f"case #{i}'s case_id", path=path)
        if case_id in seen:
            raise BadInputError(f"case id {case_id!r} appears twice", path=path, fix="give every case its own id")
        seen.add(case_id)
        file_keys = {"folder", "phases", "liver", "tumor", "segmentation", "liver_labels", "tumor_labels", "resample_masks"}
        metadata = {k: v for k, v in record.items() if k not in file_keys and k != "case_id"}
        resample = record.get("resample_masks", resample_default)
        if "phases" not in record:
            entry = _entry_from_folder(root / record.get("folder", case_id), case_id, metadata)
            entries.append(dataclasses.replace(entry, resample_masks=resample))
            continue

        def resolve(name: str | None) -> Path | None:
            if name is None:
                return None
            file = root / name  # an absolute name survives the join
            if not file.exists():
                raise MissingInputError(f"case {case_id!r} names {file}, which does not exist", path=path,
                                        fix="fix the path in the manifest (relative paths start at its folder)")
            return file

        phases = {name: resolve(p) for name, p in record["phases"].items()}
        entries.append(
            CaseEntry(
                case_id,
                phases,
                resolve(record.get("liver")),
                resolve(record.get("tumor")),
                resolve(record.get("segmentation")),
                tuple(record.get("liver_labels", (1,))),
                tuple(record.get("tumor_labels", (1,))),
                metadata,
                resample,
            )
        )
    return entries


def write_manifest(root: str | os.PathLike, records: Sequence[Mapping]) -> Path:
    """Write ``root/manifest.json`` from case records (see ``read_manifest`` for the keys)."""
    return write_text(Path(root) / MANIFEST, json.dumps({"cases": [dict(r) for r in records]}, indent=1))


def _lits_entries(root: Path) -> list[CaseEntry]:
    entries = []
    volumes = {}
    for volume in root.glob("volume-*.nii*"):
        match = re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", volume.name)
        if match is None:
            raise BadInputError(f"LiTS volume {volume.name!r} is not named volume-<number>.nii[.gz]", path=root,
                                fix="rename it (e.g. volume-7.nii.gz, with segmentation-7.nii.gz) or move it out")
        volumes[volume] = match[1]
    for volume, number in sorted(volumes.items(), key=lambda item: int(item[1])):
        segmentation = find_image(root, f"segmentation-{number}")
        metadata = {"tumor_type": None, "scanner": None}
        entries.append(CaseEntry(f"lits-{number}", {"pv": volume}, segmentation=segmentation, metadata=metadata, **LITS_LABELS))
    return entries


def read_cohort(root: str | os.PathLike, *, channel_phases: Mapping[str, str] | None = None) -> list[CaseEntry]:
    """Case entries of a cohort folder (or a manifest file); read each with ``read_case``.

    ``channel_phases`` maps the channels of an nnU-Net/MSD dataset (index or
    name) to phases where their names do not say (see ``layouts``).
    """
    from paresseg_jax.data import layouts  # builds on this module's CaseEntry

    root = Path(root)
    if root.is_file() and root.suffix == ".json":
        entries = read_manifest(root)
    elif not root.is_dir():
        raise MissingInputError("cohort folder does not exist", path=root, fix="check the path")
    elif (root / MANIFEST).is_file():
        entries = read_manifest(root / MANIFEST)
    elif layouts.dataset_split(root):
        entries = layouts.dataset_entries(root, channel_phases)
    elif any(root.glob("volume-*.nii*")):
        entries = _lits_entries(root)
    else:
        entries = [_entry_from_folder(f, f.name, {}) for f in sorted(root.iterdir()) if f.is_dir() and find_image(f, "pv")]
    if not entries:
        raise BadInputError(
            "no cases found", path=root,
            fix="expected a manifest.json, an nnU-Net or MSD dataset (dataset.json, imagesTr/), LiTS files volume-N.nii "
                "with segmentation-N.nii, or case folders holding pv.nii.gz")
    return entries
