"""Reading, checking and writing single 3D images (NIfTI, MHA/MHD, NRRD, or a DICOM series folder).

Reading cannot lie: NIfTI voxels are read with nibabel, which keeps NaN
(SimpleITK's NIfTI reader turns them into 0) and refuses a gzip stream or a
voxel block shorter than the header says (SimpleITK fills the missing slices
with 0); NaN or infinite voxels are refused in every format. Images on
another grid are resampled onto a reference grid only through
``resample_onto``, which reports a partial overlap and refuses one below
``MIN_PHASE_COVERAGE``. Every write is checked by reading the file back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from paresseg_jax.atomic import atomic_path
from paresseg_jax.data import declared_size, series_check
from paresseg_jax.data.write_check import check_image_file
from paresseg_jax.errors import BadInputError, MissingInputError, OutputError, error_line

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
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


def labels_on_grid(image: sitk.Image, reference: sitk.Image, source: Any, name: str = "mask", *,
                   resample: bool = False) -> np.ndarray:
    """Integer labels of a mask image on the grid of ``reference`` (z, y, x): in the image's own integer type
    (no float64 or int64 copy of a 512 x 512 x 60 mask, 126 MB each), int64 from a float image; a mask on
    another grid is refused unless ``resample`` (then nearest neighbour)."""
    if not resample and not same_grid(Geometry.of(image), image.GetSize(), Geometry.of(reference), reference.GetSize()):
        raise BadInputError(
            f"{name} mask is on another grid (size {image.GetSize()}, spacing {_rounded(image.GetSpacing())}, origin "
            f"{_rounded(image.GetOrigin())}) than the PV image (size {reference.GetSize()}, spacing "
            f"{_rounded(reference.GetSpacing())}, origin {_rounded(reference.GetOrigin())})", path=source,
            fix="give the mask on the PV grid, or allow resampling it (--resample_masks, or \"resample_masks\": true "
                "in manifest.json)")
    image = resample_onto(image, reference, source, nearest=True)
    labels = sitk.GetArrayFromImage(image)
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    labels = image_array(image, source, dtype=np.float64)
    if not np.array_equal(labels, np.round(labels)):
        raise BadInputError("mask has non-integer values", path=source, fix="expected integer labels (0/1 or a label map)")
    return labels.astype(np.int64)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 3) for v in values]


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` with any image suffix, or a ``folder/stem/`` DICOM folder."""
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    if (folder / stem).is_dir():
        return folder / stem
    return None
