"""Registration of a phase to PV (the paper's preprocessing, Sec. 3): rigid or affine, then B-spline, on Mattes MI.

``register_phase`` fits the transform on in-plane binned copies (seconds per
case), ``apply_transform`` resamples a phase through it on the PV grid, and
``registration_failure`` turns a SimpleITK failure into the user's error.
The settings are ``config.data.preprocess.registration`` (declared and
explained in ``config_defaults``).
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from paresseg_jax import config_defaults
from paresseg_jax.data.cache import bounding_box
from paresseg_jax.data.images import Geometry
from paresseg_jax.errors import BadInputError


def _as_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply_to(sitk.GetImageFromArray(np.asarray(array, np.float32)))


def _method(settings: Mapping, stage: str, level_sizes: list[int]) -> sitk.ImageRegistrationMethod:
    """Mattes MI with about ``metric_samples`` random samples per resolution level (a fixed cost per case).

    Regular-step gradient descent with steps in mm for both stages: on noisy
    CT, L-BFGS-B's long first steps let the B-spline chase noise.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(settings["histogram_bins"]))
    method.SetMetricSamplingStrategy(method.RANDOM)
    percentages = [min(1.0, float(settings["metric_samples"]) / n) for n in level_sizes]
    # ITK reads seed 0 as "seed from the wall clock" (sitk.sitkWallClock): shift ours so every seed is fixed.
    method.SetMetricSamplingPercentagePerLevel(percentages, int(settings["seed"]) + 1)
    # ITK 5.4 merges Mattes derivative sums across work units in thread-finishing order: with more than one
    # unit the same case registered differently run to run. One unit costs ~1.4x registration time.
    method.SetNumberOfWorkUnits(1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([int(f) for f in settings["shrink_factors"]])
    method.SetSmoothingSigmasPerLevel([float(s) for s in settings["smoothing_sigmas"]])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(settings[f"{stage}_step_mm"]),
        minStep=1e-2,
        numberOfIterations=int(settings[f"{stage}_iterations"]),
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _crop(image: sitk.Image, region: np.ndarray | None, margin_mm: float) -> sitk.Image:
    """``image`` cut to the box of ``region`` grown by ``margin_mm`` (the whole image without a region)."""
    if region is None or not np.any(region):
        return image
    box = bounding_box(np.asarray(region) > 0)  # (z0, z1, y0, y1, x0, x1)
    size = image.GetSize()
    lower, upper = [], []
    for axis in range(3):  # SimpleITK axis order x, y, z
        lo, hi = box[2 * (2 - axis)], box[2 * (2 - axis) + 1]
        grow = int(np.ceil(margin_mm / image.GetSpacing()[axis]))
        lower.append(max(0, lo - grow))
        upper.append(max(0, size[axis] - min(size[axis], hi + grow)))
    return sitk.Crop(image, lower, upper)


def register_phase(
    fixed: np.ndarray, moving: np.ndarray, geometry, settings: Mapping | None = None, region: np.ndarray | None = None
) -> tuple[sitk.Transform, dict]:
    """Transform mapping PV (fixed) points to where ``moving`` shows them, both (z, y, x) HU on one grid.

    The metric is computed in the box of ``region`` (e.g. the liver ROI)
    grown by ``margin_mm``, on copies binned in-plane to ``grid_mm``: the
    liver is what must align, and this keeps a 512 x 512 case at seconds.
    Returns the transform and a report (metric before/after, seconds).
    """
    settings = {**config_defaults.get_config().data.preprocess.registration.to_dict(), **dict(settings or {})}
    start = time.perf_counter()
    geometry = Geometry.of(geometry)
    factor = [max(1, int(round(settings["grid_mm"] / s))) for s in geometry.spacing[:2]] + [1]
    margin = float(settings["margin_mm"])
    low, high = settings["intensity_range"]
    fixed_small = sitk.BinShrink(_crop(_as_image(np.clip(fixed, low, high), geometry), region, margin), factor)
    moving_small = sitk.BinShrink(_crop(_as_image(np.clip(moving, low, high), geometry), region, 2 * margin), factor)
    voxels = int(np.prod(fixed_small.GetSize()))
    level_sizes = [max(1, voxels // int(f) ** 3) for f in settings["shrink_factors"]]

    def metric(transform: sitk.Transform) -> float:
        finest = {"shrink_factors": [1], "smoothing_sigmas": settings["smoothing_sigmas"][-1:]}
        method = _method({**settings, **finest, "initial_iterations": 0}, "initial", [voxels])
        method.SetInitialTransform(transform, inPlace=False)
        return float(method.MetricEvaluate(fixed_small, moving_small))

    before = metric(sitk.TranslationTransform(3))
    transforms = []
    if settings["initial"] != "none":
        kind = sitk.Euler3DTransform() if settings["initial"] == "rigid" else sitk.AffineTransform(3)
        initial = sitk.CenteredTransformInitializer(fixed_small, moving_small, kind, sitk.CenteredTransformInitializerFilter.GEOMETRY)
        initial.SetTranslation((0.0, 0.0, 0.0))  # both images come from one study: start from identity, centred
        method = _method(settings, "initial", level_sizes)
        method.SetInitialTransform(initial, inPlace=True)
        method.Execute(fixed_small, moving_small)
        transforms.append(initial)
    extent = [n * s for n, s in zip(fixed_small.GetSize(), fixed_small.GetSpacing())]
    mesh = [max(1, int(round(e / settings["mesh_mm"]))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed_small, mesh, order=3)
    method = _method(settings, "bspline", level_sizes)
    if transforms:
        method.SetMovingInitialTransform(transforms[0])
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed_small, moving_small)
    transforms.append(bspline)
    transform = sitk.CompositeTransform(transforms)
    report = {"metric_before": before, "metric_after": metric(transform), "seconds": time.perf_counter() - start}
    return transform, report


def apply_transform(array: np.ndarray, geometry, transform: sitk.Transform, nearest: bool = False,
                    box: tuple[int, ...] | None = None) -> np.ndarray:
    """Resample a (z, y, x) array on ``geometry`` through ``transform`` (linear, or nearest for masks). Points
    outside the moving image get its minimum (0 for masks). With a ``box`` (z0, z1, y0, y1, x0, x1,
    half-open) only its voxels are resampled: the same physical points through the same interpolator, so the
    whole grid's values there, for the box's share of the time; the rest of the grid holds that fill value
    (for a reader that reads nothing outside the box)."""
    geometry = Geometry.of(geometry)
    array = np.asarray(array)
    image = geometry.apply_to(sitk.GetImageFromArray(array)) if nearest else _as_image(array, geometry)
    start, size = (0, 0, 0), image.GetSize()
    if box is not None:  # SimpleITK order x, y, z
        low, high = box[4::-2], box[5::-2]
        start, size = tuple(int(v) for v in low), tuple(int(h - v) for v, h in zip(low, high))
    fill = 0 if nearest else float(array.min())
    grid = (size, transform, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
            image.TransformIndexToPhysicalPoint(start), image.GetSpacing(), image.GetDirection(), fill)
    if nearest:
        moved = sitk.GetArrayFromImage(sitk.Resample(image, *grid)).astype(array.dtype)
    else:
        moved = sitk.GetArrayFromImage(sitk.Resample(image, *grid, sitk.sitkFloat32))
    if box is None:
        return moved
    whole = np.full(array.shape, fill, moved.dtype)
    whole[tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))] = moved
    return whole


def registration_failure(error: RuntimeError, path) -> Exception:
    """The user's error for a SimpleITK failure while registering the image ``path`` to PV (an empty or
    constant image, one showing another body part); any other error is returned unchanged (a bug)."""
    text = str(error)
    if "SimpleITK" not in text and "sitk::ERROR" not in text:
        return error
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "ERROR" in line), lines[-1]).split("): ", 1)[-1]
    return BadInputError(f"registration to PV failed ({reason})", path=path,
                         fix="check that the image is not empty or constant and shows the same study as PV; "
                             "--noregister (config.data.preprocess.register=False) skips registration")
