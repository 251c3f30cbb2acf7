"""DICOM objects as the rest of the library needs them: series headers, volumes and SEG masks as SimpleITK images.

pydicom and highdicom are an optional extra (``pip install 'paresseg_jax[dicom]'``):
they are imported only when a DICOM object other than a plain image series is
read or written, and their absence is a user-fixable error, not an ImportError.
Plain DICOM image series are read by SimpleITK (``images.read_image``) without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from paresseg_jax import extras
from paresseg_jax.data import series_check
from paresseg_jax.errors import PareSegError

_GRID_ATOL = 1e-3  # direction cosines, pixel spacing in mm
_POSITION_TOL = 0.1  # voxels: headers round positions (0.01 mm of a 0.625 mm slice is 0.016 voxel)


def require(module: str, purpose: str):
    """Import ``module`` (``pydicom`` or ``highdicom``) or fail with the install command."""
    return extras.require(module, purpose, "dicom")


def read_header(path: str | os.PathLike):
    """The header of a DICOM file (no pixel data), or None if the file is not DICOM."""
    pydicom = require("pydicom", "reading DICOM headers")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
        return None


def slice_normal(header) -> np.ndarray:
    """The unit normal of a slice: row direction x column direction (ImageOrientationPatient)."""
    orientation = np.asarray(header.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def sort_slices(headers: Sequence) -> list[int]:
    """Order of the slices of one series along their normal (what SimpleITK stacks as z)."""
    normal = slice_normal(headers[0])
    positions = [float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers]
    return sorted(range(len(headers)), key=positions.__getitem__)


def series_headers(folder: str | os.PathLike) -> list:
    """Headers of the one image series in ``folder``, sorted along the slice normal, each with ``.filename``.

    Files that are not DICOM are skipped; several series in the folder are an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PareSegError("is not a folder of DICOM slices", path=folder, fix="give the PV series' folder")
    headers = [h for p in sorted(folder.iterdir()) if p.is_file() and (h := read_header(p)) is not None]
    headers = [h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h]
    if not headers:
        raise PareSegError("holds no DICOM image slices", path=folder, fix="give the PV series' folder")
    series = {h.SeriesInstanceUID for h in headers}
    if len(series) > 1:
        raise PareSegError(f"holds {len(series)} DICOM series", path=folder, fix="put each series in its own folder")
    positions = {tuple(np.round(np.asarray(h.ImagePositionPatient, float), 2)) for h in headers}
    if len(positions) < len(headers):
        raise PareSegError(f"holds {len(headers)} slices at {len(positions)} positions: several acquisitions "
                           "(e.g. contrast phases) in one series", path=folder,
                           fix="move the slices of one acquisition into a folder of their own")
    return [headers[i] for i in sort_slices(headers)]


def read_series_image(paths: Iterable[str | os.PathLike], allow_gaps: bool = False) -> sitk.Image:
    """The volume of one series' slice files (any order), in HU with the DICOM geometry. Unevenly spaced
    slices are refused, or with ``allow_gaps`` resampled onto even ones (``series_check``).

    GDCM widens int16 slices with a rescale intercept to int32; HU that fit
    int16 are stored back as int16 (half the bytes to write, nothing lost).
    """
    paths = [Path(p) for p in paths]
    headers = [read_header(p) for p in paths]
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise PareSegError(f"the slices of this series have different sizes {sorted(sizes)} (rows, columns)",
                           path=paths[0].parent, fix="keep the slices of one volume in the series")
    ordered = [str(paths[i]) for i in sort_slices(headers)]
    positions = series_check.slice_positions(ordered, paths[0].parent)
    even_spacing = series_check.check_spacing(positions, paths[0].parent, allow_gaps)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(ordered)
    try:
        image = reader.Execute()
        if even_spacing is not None:
            image = series_check.even_slices(image, positions, even_spacing)
    except RuntimeError as error:  # ITK: "Exception thrown in ...: file:line", then what went wrong
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise PareSegError(f"cannot read this DICOM series ({lines[min(1, len(lines) - 1)]})",
                           path=Path(ordered[0]).parent, fix="check that its files are complete CT slices") from None
    if image.GetPixelID() == sitk.sitkInt32:
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(image)
        if -32768 <= extremes.GetMinimum() and extremes.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    return image


def volume_to_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a ``(slice, row, column)`` array with a 4x4 index-to-patient (LPS) affine,
    as highdicom's ``Volume`` holds a segmentation."""
    affine = np.asarray(affine, float)
    columns = affine[:3, :3][:, ::-1]  # SimpleITK index order (x=column, y=row, z=slice)
    spacing = np.linalg.norm(columns, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(spacing.tolist()))
    image.SetOrigin(tuple(affine[:3, 3].tolist()))
    image.SetDirection(tuple((columns / spacing).ravel().tolist()))
    return image


def slice_indices_on_grid(headers: Sequence, image: sitk.Image) -> list[int]:
    """For each slice header, the z index of the image slice it lies on; an error if any is off the image's grid.

    A slice is on the grid when its first pixel is a voxel center of the
    image (to a tenth of a voxel, as headers round positions), its rows and
    columns run along the image's x and y axes, its pixel spacing and size
    are the image's, and no other slice lies on the same image slice.
    """
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    spacing = image.GetSpacing()
    indices = []
    for header in headers:
        orientation = np.asarray(header.ImageOrientationPatient, float)
        row_spacing, column_spacing = map(float, header.PixelSpacing)
        index = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(map(float, header.ImagePositionPatient))))
        on_grid = (
            (int(header.Columns), int(header.Rows)) == tuple(image.GetSize()[:2])
            and np.allclose(orientation[:3], direction[:, 0], atol=_GRID_ATOL)
            and np.allclose(orientation[3:], direction[:, 1], atol=_GRID_ATOL)
            and np.allclose((column_spacing, row_spacing), spacing[:2], atol=_GRID_ATOL)
            and np.allclose(index[:2], 0.0, atol=_POSITION_TOL)
            and abs(index[2] - round(index[2])) < _POSITION_TOL
            and 0 <= round(index[2]) < image.GetSize()[2]
            and round(index[2]) not in indices
        )
        if not on_grid:
            raise PareSegError(
                f"slice {getattr(header, 'filename', header.SOPInstanceUID)} of the source series does not lie on the "
                f"label map's grid (size {image.GetSize()}, spacing {spacing}, origin {image.GetOrigin()})",
                fix="give the label map in the geometry of that series, as it was read from it",
            )
        indices.append(round(index[2]))
    return indices
