"""Synthetic multi-phase abdominal CT cases.

The paper's data is private, so the library ships a generator whose cases
keep the property the method relies on: some tumors are obvious in one phase
and nearly invisible in another (FNH is iso-attenuating in PV and bright in
ART). Every attenuation value lives in ``HU``; every case is a pure function
of its seed. Anatomy is drawn once on the PV grid as a label volume, each
phase is painted from the table, the non-PV phases are moved by a breathing
deformation, then blurred and made noisy. Ground truth is in PV geometry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from paresseg_jax.data import splits
from paresseg_jax.data.case import Case, write_case
from paresseg_jax.data.layouts import write_manifest

TUMOR_TYPES = ("Cyst", "FNH", "HCC", "HEM", "METs")
PHASE_ORDER = ("nc", "art", "pv", "dl")  # column order of HU

# Mean attenuation (HU) per phase (NC, ART, PV, DL) and per-case jitter sd (HU).
# Tumor sub-parts: capsule (HCC rim), scar (FNH center), periphery (hemangioma
# nodules / rim), rim (metastasis target ring).
HU = {
    "air": ((-1000, -1000, -1000, -1000), 0),
    "fat": ((-100, -100, -100, -100), 8),
    "soft_tissue": ((35, 45, 55, 50), 5),
    "bone": ((700, 700, 700, 700), 150),
    "aorta": ((40, 280, 160, 120), 10),
    "vein": ((40, 110, 180, 130), 8),
    "spleen": ((50, 120, 120, 100), 5),
    "kidney": ((35, 200, 170, 140), 8),
    "liver": ((55, 75, 110, 95), 2.5),
    "Cyst": ((10, 10, 12, 12), 2),
    "HCC": ((40, 115, 85, 75), 3),
    "HCC_capsule": ((40, 90, 95, 110), 3),
    "FNH": ((50, 150, 110, 100), 1.5),
    "FNH_scar": ((35, 60, 90, 110), 3),
    "HEM": ((40, 45, 90, 125), 3),
    "HEM_periphery": ((40, 280, 160, 130), 8),
    "METs": ((35, 55, 65, 70), 3),
    "METs_rim": ((35, 95, 100, 80), 3),
}
BONE_RANGE = (400.0, 1000.0)
# Contrast timing: each contrast phase's enhancement above NC is scaled by U(lo, hi), one draw per case and phase.
ENHANCEMENT_SCALE = (0.92, 1.08)
# Scanner profiles: slice thickness (mm), noise sd range (HU), partial-volume blur sd (voxels).
SCANNERS = {
    "scanner_5mm": {"slice_mm": 5.0, "noise_hu": (8.0, 14.0), "blur_xy": (0.5, 0.8), "blur_z": (0.6, 0.9)},
    "scanner_7mm": {"slice_mm": 7.0, "noise_hu": (12.0, 20.0), "blur_xy": (0.6, 1.0), "blur_z": (0.8, 1.2)},
}
IN_PLANE_MM_AT_512 = (0.52, 0.86)  # in-plane spacing of a 512-wide image; scaled for smaller test images
LESIONS_PER_CASE = (1, 3)
LESION_DIAMETER_MM = (5.0, 60.0)
# Breathing misregistration of non-PV phases: cranio-caudal shift, in-plane shift,
# smooth local displacement amplitude (mm) and rotation (degrees).
BREATHING = {"shift_z_mm": (6.0, 13.0), "shift_xy_mm": 3.0, "local_mm": 2.5, "rotation_deg": 3.0}

MIN_SHAPE = (4, 16, 16)  # (z, y, x): room for a liver, a lesion and the body around them
_LABELS = tuple(HU)
_LABEL = {name: i for i, name in enumerate(_LABELS)}


@dataclasses.dataclass
class _Lesion:
    box: tuple[slice, slice, slice]
    rho: np.ndarray  # normalised lobulated radius, < 1 inside
    nodules: np.ndarray  # bool, peripheral nodule pattern (hemangioma)


def make_case(
    seed: int,
    tumor_type: str,
    shape: Sequence[int] = (40, 512, 512),
    spacing: Sequence[float] | None = None,
    scanner: str | None = None,
    phases: Sequence[str] = ("pv", "art"),
) -> Case:
    """One synthetic case. ``shape`` and ``spacing`` are in array order (z, y, x), mm.

    Without ``spacing`` the in-plane spacing makes a realistic field of view
    and the slice thickness is the scanner's. ``scanner`` defaults to a
    seeded choice among ``SCANNERS``.
    """
    return make_case_with_phase_masks(seed, tumor_type, shape, spacing, scanner, phases)[0]


def make_case_with_phase_masks(*args, **kwargs) -> tuple[Case, dict[str, dict[str, np.ndarray]]]:
    """``make_case`` (same arguments) plus, per phase, the liver and tumor masks where that phase shows them.

    Non-PV phases are moved by breathing, so these differ from the PV ground
    truth: they are what a registration must recover.
    """
    case, masks, _ = make_case_with_truth(*args, **kwargs)
    return case, masks


def make_case_with_truth(
    seed: int,
    tumor_type: str,
    shape: Sequence[int] = (40, 512, 512),
    spacing: Sequence[float] | None = None,
    scanner: str | None = None,
    phases: Sequence[str] = ("pv", "art"),
) -> tuple[Case, dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``make_case_with_phase_masks`` plus each non-PV phase's true motion: ``[3, z, y, x]`` voxel coordinates
    (z, y, x) of the PV volume that each of its voxels shows, what a registration error is measured against."""
    shape = _checked_request(tumor_type, phases, shape)
    rng = np.random.default_rng(seed)
    scanner = scanner or str(rng.choice(sorted(SCANNERS)))
    if scanner not in SCANNERS:
        raise ValueError(f"scanner {scanner!r} is not one of {sorted(SCANNERS)}")
    profile = SCANNERS[scanner]
    if spacing is None:
        in_plane = rng.uniform(*IN_PLANE_MM_AT_512) * 512 / max(shape[1:])
        spacing = (profile["slice_mm"], in_plane, in_plane)
    spacing = tuple(float(s) for s in spacing)
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    labels, liver_center = _anatomy(rng, shape, spacing, z, y, x)
    lesions = _lesions(rng, labels, spacing, z, y, x)
    liver, tumor = _truth_masks(labels, lesions)
    values, spleen_texture = _enhancement(rng, shape, spacing)
    images, phase_masks, motion = {}, {}, {}
    for phase in phases:
        hu = _phase_hu(phase, labels, lesions, tumor_type, values, spleen_texture)
        masks = {"liver": liver, "tumor": tumor}
        if phase != "pv":
            coordinates = _breathing(rng, shape, spacing, z, y, x, liver_center)
            hu = ndimage.map_coordinates(hu, coordinates, order=1, mode="nearest")
            masks = {k: ndimage.map_coordinates(m, coordinates, order=0, mode="nearest") for k, m in masks.items()}
            motion[phase] = coordinates
        images[phase] = _scanned(rng, hu, profile)
        phase_masks[phase] = masks
    order = ["pv"] + [p for p in phases if p != "pv"]
    images = {p: images[p] for p in order}
    spacing_xyz = tuple(reversed(spacing))
    origin = tuple(float(a[0]) for a in reversed(axes))
    metadata = {
        "case_id": f"phantom-{seed}",
        "tumor_type": tumor_type,
        "scanner": scanner,
        "seed": int(seed),
        "num_lesions": len(lesions),
    }
    case = Case(images, liver, tumor, spacing_xyz, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), metadata)
    return case, phase_masks, motion


def _checked_request(tumor_type: str, phases: Sequence[str], shape: Sequence[int]) -> tuple[int, int, int]:
    """The requested shape as integers, after refusing an unknown tumor type, phase or a too small shape."""
    if tumor_type not in TUMOR_TYPES:
        raise ValueError(f"tumor_type {tumor_type!r} is not one of {TUMOR_TYPES}")
    if "pv" not in phases or any(p not in PHASE_ORDER for p in phases):
        raise ValueError(f"phases {tuple(phases)} must include 'pv' and use names from {PHASE_ORDER}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape[1:]) < MIN_SHAPE[1] or shape[0] < MIN_SHAPE[0]:
        raise ValueError(f"shape {shape} must be (z, y, x) with at least {MIN_SHAPE[0]} slices and "
                         f"{MIN_SHAPE[1]} x {MIN_SHAPE[2]} pixels")
    return shape


def _truth_masks(labels: np.ndarray, lesions: list[_Lesion]) -> tuple[np.ndarray, np.ndarray]:
    """``(liver, tumor)`` masks; each lesion (its nodules and ``rho`` too) is cut to the liver."""
    liver = np.isin(labels, (_LABEL["liver"], _LABEL["vein"])).astype(np.uint8)
    tumor = np.zeros(labels.shape, np.uint8)
    for lesion in lesions:
        inside = (lesion.rho < 1) & (liver[lesion.box] > 0)
        tumor[lesion.box] |= inside.astype(np.uint8)
        lesion.nodules &= inside
        lesion.rho = np.where(inside, lesion.rho, np.inf)
    return liver, tumor


def _enhancement(rng: np.random.Generator, shape, spacing) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each tissue's HU per phase (one contrast timing per phase, jittered per tissue) and the spleen's texture."""
    timing = np.concatenate([[1.0], rng.uniform(*ENHANCEMENT_SCALE, size=3)])
    values = {name: _jittered(rng, name, timing) for name in _LABELS}
    values["bone"] = np.full(4, rng.uniform(*BONE_RANGE))
    return values, _smooth_field(rng, shape, spacing, 15.0)


def _phase_hu(phase: str, labels: np.ndarray, lesions: list[_Lesion], tumor_type: str, values: dict,
              spleen_texture: np.ndarray) -> np.ndarray:
    """One phase's HU before breathing and the scanner: tissues by label, the spleen's ART texture, lesions."""
    column = PHASE_ORDER.index(phase)
    lut = np.array([values[name][column] for name in _LABELS], np.float32)
    hu = lut[labels]
    if phase == "art":  # arciform enhancement of the spleen
        hu += np.where(labels == _LABEL["spleen"], 30.0 * spleen_texture, 0.0).astype(np.float32)
    for lesion in lesions:
        _paint_lesion(hu, lesion, tumor_type, values, column)
    return hu


def _scanned(rng: np.random.Generator, hu: np.ndarray, profile: Mapping) -> np.ndarray:
    """``hu`` as the scanner shows it: blurred by its point spread, plus its noise."""
    blur = (rng.uniform(*profile["blur_z"]), *[rng.uniform(*profile["blur_xy"])] * 2)
    hu = ndimage.gaussian_filter(hu, blur)
    hu += rng.uniform(*profile["noise_hu"]) * rng.standard_normal(hu.shape, dtype=np.float32)
    return hu.astype(np.float32)


def make_cohort(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    shape: Sequence[int] = (40, 512, 512),
    phases: Sequence[str] = ("pv", "art"),
    num_folds: int = 5,
    progress: bool = True,
) -> Path:
    """Write ``num_cases`` phantom cases in our layout plus ``manifest.json``.

    Tumor types cycle through ``TUMOR_TYPES`` and scanners alternate every
    full cycle, so types and scanners are balanced; ``split`` is the case's
    fold (``fold-k``) from ``splits.stratified_folds`` by tumor type.
    """
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    out_dir = Path(out_dir)
    scanners = sorted(SCANNERS)
    plan = []
    for i in range(num_cases):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        plan.append((f"case_{i:04d}", case_seed, TUMOR_TYPES[i % len(TUMOR_TYPES)], scanners[(i // len(TUMOR_TYPES)) % len(scanners)]))
    ids = [p[0] for p in plan]
    folds = ([ids] if min(num_folds, num_cases) < 2  # one fold: nothing to stratify
             else splits.stratified_folds(ids, [p[2] for p in plan], num_folds=min(num_folds, num_cases), seed=seed))
    fold_of = {case_id: k for k, fold in enumerate(folds) for case_id in fold}
    records = []
    iterator = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc="phantom cases", unit="case")
    for case_id, case_seed, tumor_type, scanner in iterator:
        case = make_case(case_seed, tumor_type, shape=shape, scanner=scanner, phases=phases)
        write_case(case, out_dir / case_id)
        split = f"fold-{fold_of[case_id]}"
        records.append({"case_id": case_id, "tumor_type": tumor_type, "scanner": scanner, "split": split, "seed": case_seed})
    write_manifest(out_dir, records)
    return out_dir


def _jittered(rng: np.random.Generator, name: str, scale: np.ndarray) -> np.ndarray:
    """Per-case HU of one tissue: enhancement above NC times the case's per-phase ``scale``, plus one bounded offset."""
    mean, sd = HU[name]
    mean = np.asarray(mean, np.float64)
    offset = np.clip(rng.normal(0.0, sd), -2 * sd, 2 * sd) if sd else 0.0
    return mean[0] + (mean - mean[0]) * scale + offset


def _smooth_field(rng: np.random.Generator, shape, spacing, length_mm: float) -> np.ndarray:
    """Zero-mean, unit-sd random field smooth over ``length_mm``, made separably from a coarse grid (fast)."""
    factors = []
    for n, s in zip(shape, spacing):
        t = (np.arange(n) - (n - 1) / 2) * s
        extent = n * s / 2 + length_mm
        centers = np.arange(-extent, extent + length_mm, length_mm)
        factors.append(np.exp(-0.5 * ((t[:, None] - centers[None, :]) / length_mm) ** 2).astype(np.float32))
    coarse = rng.standard_normal(tuple(f.shape[1] for f in factors)).astype(np.float32)
    field = np.einsum("ai,ijk->ajk", factors[0], coarse)
    field = np.einsum("bj,ajk->abk", factors[1], field)
    field = np.einsum("ck,abk->abc", factors[2], field)
    return (field - field.mean()) / (field.std() + 1e-6)


def _ellipsoid(z, y, x, center, radii) -> np.ndarray:
    return ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2


def _anatomy(rng, shape, spacing, z, y, x):
    """Label volume of body, organs, vessels and liver; returns it and the liver center (mm, z y x)."""
    fov_y, fov_x = shape[1] * spacing[1], shape[2] * spacing[2]
    extent_z = shape[0] * spacing[0]
    a, b = fov_x * rng.uniform(0.40, 0.46), fov_y * rng.uniform(0.30, 0.35)  # body semi-axes
    body_y = fov_y * rng.uniform(-0.02, 0.04)
    labels = np.zeros(shape, np.uint8)

    def paint(name, where):
        labels[np.broadcast_to(where, shape)] = _LABEL[name]

    body = ((y - body_y) / b) ** 2 + (x / a) ** 2
    paint("fat", body < 1)
    inner = body < rng.uniform(0.78, 0.86) ** 2
    paint("soft_tissue", inner)
    spine_y = body_y + 0.62 * b
    spine_r = 0.17 * b
    paint("bone", (y - spine_y) ** 2 + (x / 1.1) ** 2 < spine_r**2)
    aorta = (spine_y - 0.32 * b, 0.09 * a)
    paint("aorta", (y - aorta[0]) ** 2 + (x - aorta[1]) ** 2 < (0.1 * b) ** 2)
    for side in (-1, 1):
        kidney = _ellipsoid(z, y, x, (-0.28 * extent_z, spine_y - 0.1 * b, side * 0.36 * a), (0.2 * extent_z, 0.2 * b, 0.13 * a))
        paint("kidney", kidney < 1)
    spleen = _ellipsoid(z, y, x, (0.15 * extent_z, body_y + 0.25 * b, 0.62 * a), (0.25 * extent_z, 0.32 * b, 0.17 * a))
    paint("spleen", (spleen < 1) & inner)

    center = (0.05 * extent_z, body_y - 0.1 * b, -0.45 * a)
    radii = (min(85.0, 0.42 * extent_z) * rng.uniform(0.9, 1.05), 0.6 * b * rng.uniform(0.9, 1.05), 0.42 * a * rng.uniform(0.9, 1.05))
    lobes = 1.0 + 0.12 * _smooth_field(rng, shape, spacing, 0.5 * max(radii))
    liver = (_ellipsoid(z, y, x, center, radii) < lobes**2) & (body < 0.8**2)
    paint("liver", liver)
    thickness = rng.uniform(0.24, 0.3)
    vessel_length = max(12.0, 3.0 * spacing[1])
    # where two smooth random fields are both near zero: thin, curved, branching tubes
    vessels = _smooth_field(rng, shape, spacing, vessel_length) ** 2 + _smooth_field(rng, shape, spacing, vessel_length) ** 2 < thickness**2
    paint("vein", liver & vessels)
    return labels, center


def _lesions(rng, labels, spacing, z, y, x) -> list[_Lesion]:
    """1-3 round to lobulated lesions centred deep enough inside the liver."""
    step = [max(1, int(round(4.0 / s))) for s in spacing]
    coarse = np.isin(labels[:: step[0], :: step[1], :: step[2]], (_LABEL["liver"], _LABEL["vein"]))
    depth = ndimage.distance_transform_edt(coarse, sampling=[s * k for s, k in zip(spacing, step)])
    if depth.max() <= 0:
        raise ValueError(f"the liver is empty for shape {labels.shape} and spacing {spacing}; use a larger shape")
    r_min = max(LESION_DIAMETER_MM[0] / 2, 3.0 * spacing[1], 1.0 * spacing[0])
    r_max = max(r_min, min(LESION_DIAMETER_MM[1] / 2, 0.8 * depth.max()))
    lesions = []
    for _ in range(rng.integers(LESIONS_PER_CASE[0], LESIONS_PER_CASE[1] + 1)):
        radius = float(np.exp(rng.uniform(np.log(r_min), np.log(r_max))))
        candidates = np.argwhere(depth >= min(radius, depth.max()) * 0.9)
        index = candidates[rng.integers(len(candidates))] * step
        center = [float(a.ravel()[i]) for a, i in zip((z, y, x), index)]
        radii = radius * rng.uniform(0.85, 1.15, size=3)
        box = tuple(
            slice(int(np.searchsorted(a.ravel(), c - 1.3 * r)), int(np.searchsorted(a.ravel(), c + 1.3 * r)) + 1)
            for a, c, r in zip((z, y, x), center, radii)
        )
        local = [a.ravel()[s] for a, s in zip((z, y, x), box)]
        lz, ly, lx = local[0][:, None, None], local[1][None, :, None], local[2][None, None, :]
        local_shape = tuple(len(v) for v in local)
        lobulation = rng.uniform(0.0, 0.25)
        bumps = _smooth_field(rng, local_shape, spacing, max(radius * 0.6, min(spacing)))
        rho = np.sqrt(_ellipsoid(lz, ly, lx, center, radii)) / (1.0 + lobulation * bumps)
        nodules = _smooth_field(rng, local_shape, spacing, max(radius * 0.35, min(spacing))) > 0.4
        lesions.append(_Lesion(box, rho.astype(np.float32), nodules))
    return lesions


def _paint_lesion(hu: np.ndarray, lesion: _Lesion, tumor_type: str, values: dict, column: int) -> None:
    """Paint one lesion's per-phase look (the ``HU`` table) into ``hu`` in place."""
    rho, region = lesion.rho, hu[lesion.box]
    inside = rho < 1
    core = values[tumor_type][column]
    if tumor_type == "Cyst":
        part = np.full(rho.shape, core, np.float32)
    elif tumor_type == "HCC":
        part = np.where(rho > 0.88, values["HCC_capsule"][column], core)
    elif tumor_type == "FNH":
        part = np.where(rho < 0.22, values["FNH_scar"][column], core)
    elif tumor_type == "METs":
        part = np.where(rho > 0.88, values["METs_rim"][column], core)
    else:  # HEM: peripheral nodules in ART, centripetal fill-in in PV, iso to blood later
        rim = values["HEM_periphery"][column]
        if PHASE_ORDER[column] == "art":
            part = np.where(lesion.nodules & (rho > 0.6), rim, core)
        elif PHASE_ORDER[column] == "pv":
            part = core + (rim - core) * np.clip((rho - 0.3) / 0.6, 0.0, 1.0)
        else:
            part = np.full(rho.shape, core, np.float32)
    region[inside] = np.broadcast_to(part, rho.shape)[inside]


def _breathing(rng, shape, spacing, z, y, x, center) -> np.ndarray:
    """Voxel coordinates (3, z, y, x) in the PV volume that each voxel of a breathing-moved phase shows.

    A cranio-caudal shift, a small in-plane shift, a small rotation about
    the liver center, and a smooth local displacement (mm).
    """
    angles = np.deg2rad(rng.uniform(-1, 1, size=3) * BREATHING["rotation_deg"] * np.array([0.3, 0.3, 1.0]))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # about the x axis: mixes z and y
    rot_y = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # about the y axis: mixes z and x
    rot_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # about the z axis: in-plane
    rotation = (rot_z @ rot_y @ rot_x).astype(np.float32)
    shift = np.array(
        [rng.choice((-1, 1)) * rng.uniform(*BREATHING["shift_z_mm"]), *rng.uniform(-1, 1, size=2) * BREATHING["shift_xy_mm"]],
        np.float32,
    )
    relative = (z - center[0], y - center[1], x - center[2])
    coordinates = np.empty((3, *shape), np.float32)
    for axis in range(3):
        moved = sum(rotation[axis, k] * relative[k] for k in range(3)) + center[axis] + shift[axis]
        moved = moved + BREATHING["local_mm"] * _smooth_field(rng, shape, spacing, 60.0)
        coordinates[axis] = moved / spacing[axis] + (shape[axis] - 1) / 2
    return coordinates
