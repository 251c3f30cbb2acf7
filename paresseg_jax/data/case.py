"""The case: one multi-phase CT study as numpy volumes on the PV grid, read from a ``CaseEntry``.

A ``Case`` holds every phase as a numpy ``(z, y, x)`` float32 volume in HU on
the PV grid, the liver and tumor masks (uint8 0/1, or None) in the same grid,
and the PV geometry in SimpleITK ``(x, y, z)`` order. Phases acquired on
another grid are resampled onto PV when read, so everything downstream works
voxel by voxel; a phase covering PV only partly is reported, and refused
below ``images.MIN_PHASE_COVERAGE``. A mask on another grid than PV is refused
unless resampling is asked for (``resample_masks``): resampling a mask moves
the metrics and the ROI, so it must be a choice, not an accident.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from paresseg_jax.data.images import Geometry, image_array, labels_on_grid, read_image, resample_onto, write_image
from paresseg_jax.data.layouts import MASK_NAMES, CaseEntry, case_folder_entry
from paresseg_jax.errors import BadInputError, MissingInputError


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


def read_case(source: CaseEntry | str | os.PathLike) -> Case:
    """Read a case from a ``CaseEntry`` or from a case folder of our layout.

    A case folder's metadata comes from the ``manifest.json`` beside it when
    there is one (matched by folder name), else only ``case_id`` is known. An
    entry's phases and masks may be SimpleITK images already in memory (a
    notebook's) instead of files: both go through the same checks.
    """
    if not isinstance(source, CaseEntry):
        folder = Path(source)
        if not folder.is_dir():
            raise MissingInputError("case folder does not exist", path=folder, fix="check the path")
        source = case_folder_entry(folder)
    if "pv" not in source.phases:
        raise BadInputError(f"case {source.case_id!r} has no PV phase (phases: {sorted(source.phases)})",
                            fix="PV is the target phase and is required")
    pv_image = _image(source.phases["pv"])
    phases = _phases_on_pv_grid({**source.phases, "pv": pv_image},
                                {name: _named(file, f"{name} image") for name, file in source.phases.items()})
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
        liver = liver_from_labels(_read_labels(source.liver, pv_image, source.resample_masks, "liver"),
                                  _named(source.liver, "liver mask"), source.liver_label)
    if source.tumor is not None:
        tumor = check_binary_mask(_read_labels(source.tumor, pv_image, source.resample_masks, "tumor"),
                                  _named(source.tumor, "tumor mask"), "tumor")
    metadata = {"tumor_type": None, "scanner": None, **dict(source.metadata), "case_id": source.case_id}
    geometry = Geometry.of(pv_image)
    return Case(phases, liver, tumor, geometry.spacing, geometry.origin, geometry.direction, metadata)


def _image(source: sitk.Image | str | os.PathLike) -> sitk.Image:
    return source if isinstance(source, sitk.Image) else read_image(source)


def _named(source: sitk.Image | str | os.PathLike, what: str) -> Any:
    """What error messages call a source: its path, or "the <what>" for an image in memory."""
    return f"the {what}" if isinstance(source, sitk.Image) else source


def _phases_on_pv_grid(images: Mapping[str, sitk.Image | str | os.PathLike], sources: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every phase as a ``(z, y, x)`` float32 HU array on the PV grid (the others resampled onto it).

    ``images`` maps phase names ('pv' required) to SimpleITK images or files,
    read one at a time; ``sources`` names each in error messages.
    """
    pv_image = _image(images["pv"])
    phases = {"pv": image_array(pv_image, sources["pv"])}
    for name in images:
        if name != "pv":
            phases[name] = image_array(resample_onto(_image(images[name]), pv_image, sources[name], nearest=False),
                                       sources[name])
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


def read_mask(path: str | os.PathLike, case: Case, name: str = "liver", *, resample: bool = False) -> np.ndarray:
    """A 0/1 mask file (e.g. a liver model's prediction) on the case's PV grid, uint8.

    A mask on another grid is refused unless ``resample``.
    """
    return check_binary_mask(read_labels(path, case, name, resample=resample), path, name)


def read_labels(path: str | os.PathLike, case: Case, name: str = "mask", *, resample: bool = False) -> np.ndarray:
    """A mask or label map file on the case's PV grid, int64 labels (another grid only with ``resample``)."""
    reference = case.geometry.apply_to(sitk.Image(list(reversed(case.shape)), sitk.sitkUInt8))
    return _read_labels(Path(path), reference, resample, name)


def _read_labels(source: sitk.Image | Path, reference: sitk.Image, resample: bool, name: str) -> np.ndarray:
    return labels_on_grid(_image(source), reference, _named(source, f"{name} mask"), name, resample=resample)




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
