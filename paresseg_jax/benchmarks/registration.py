"""Where to register ART to PV: target registration error (mm, inside the liver) and seconds per region.

``paresseg-bench registration [--cases=3] [--size=96] [--slices=24] [--json=out.json]``
makes phantom cases, whose true ART motion is known
(``phantom.make_case_with_truth``), and registers ART to PV with the
default settings on three regions: the whole image (what
``preprocess.prepare_phases`` does for every case), a predicted liver's box
(stood in for by the ground-truth liver dilated by ``--predicted_error_mm``,
the size of a liver model's boundary error) and the ground-truth liver's
box (usable for training cases only). The error at a PV liver voxel is the
distance between it and the PV point that the registered ART shows there.
"""

from __future__ import annotations

import json
import time

import numpy as np
import SimpleITK as sitk
from absl import app, flags
from scipy import ndimage

from paresseg_jax.atomic import write_text
from paresseg_jax.data import phantom, preprocess
from paresseg_jax.data.case import Case
from paresseg_jax.data.registration import register_phase

REGIONS = ("whole image", "predicted liver box", "ground-truth liver box")


def target_registration_error(case: Case, motion: np.ndarray, transform: sitk.Transform | None) -> np.ndarray:
    """Millimetres, one per PV liver voxel, between the voxel and the PV point that the registered phase shows
    there. ``motion``: ``[3, z, y, x]`` PV voxel coordinates each voxel of the unregistered phase shows;
    ``transform``: ``register_phase``'s (None: unregistered)."""
    inside = np.argwhere(np.asarray(case.liver) > 0)  # (n, 3) z, y, x indices
    spacing_zyx = np.asarray(case.spacing_zyx, np.float64)
    where = inside.astype(np.float64)
    if transform is not None:
        field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, *_grid(case))
        shift_xyz = sitk.GetArrayFromImage(field)[tuple(inside.T)]  # mm, x y z (identity direction)
        where = where + shift_xyz[:, ::-1] / spacing_zyx
    shown = np.stack([ndimage.map_coordinates(motion[axis], where.T, order=1, mode="nearest") for axis in range(3)], 1)
    return np.linalg.norm((shown - inside) * spacing_zyx, axis=1)


def _grid(case: Case) -> tuple:
    size = tuple(int(n) for n in reversed(np.shape(case.liver)))
    return size, tuple(case.origin), tuple(case.spacing), tuple(case.direction)


def regions(case: Case, predicted_error_mm: float) -> dict[str, np.ndarray | None]:
    """The masks whose box (grown by ``margin_mm``) each choice registers in (None: the whole image)."""
    spacing_zyx = case.spacing_zyx
    radius = [max(0, int(round(predicted_error_mm / s))) for s in spacing_zyx]
    grown = ndimage.binary_dilation(case.liver > 0, np.ones([2 * r + 1 for r in radius], bool))
    return dict(zip(REGIONS, (None, grown, case.liver)))


def measure_case(seed: int, tumor_type: str, shape, predicted_error_mm: float = 10.0,
                 settings: dict | None = None) -> list[dict]:
    """One phantom case's rows: the error before registration and after it on each region, with seconds.
    ``settings``: registration settings changed from the defaults."""
    case, _, motion = phantom.make_case_with_truth(seed, tumor_type, shape)
    settings = preprocess.resolve_config({"registration": settings or {}})["registration"]
    error = target_registration_error(case, motion["art"], None)
    rows = [{"case": case.case_id, "region": "unregistered", "mean_mm": float(error.mean()),
             "p95_mm": float(np.percentile(error, 95)), "seconds": 0.0}]
    for name, region in regions(case, predicted_error_mm).items():
        start = time.perf_counter()
        transform, _ = register_phase(case.phases["pv"], case.phases["art"], case, settings, region)
        seconds = time.perf_counter() - start
        error = target_registration_error(case, motion["art"], transform)
        rows.append({"case": case.case_id, "region": name, "mean_mm": float(error.mean()),
                     "p95_mm": float(np.percentile(error, 95)), "seconds": seconds})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Means over cases, one row per region in the order first seen."""
    names = list(dict.fromkeys(r["region"] for r in rows))
    return [{"region": name, **{k: float(np.mean([r[k] for r in rows if r["region"] == name]))
                                for k in ("mean_mm", "p95_mm", "seconds")}} for name in names]


FLAGS = flags.FLAGS


def define_flags():
    """This subcommand's flags, defined when it runs (``cli.run_app``), not at import."""
    flags.DEFINE_integer("cases", 3, "phantom cases (tumor types cycle)")
    flags.DEFINE_integer("size", 96, "in-plane size of each case")
    flags.DEFINE_integer("slices", 24, "slices per case")
    flags.DEFINE_float("predicted_error_mm", 10.0, "how far the stand-in predicted liver reaches past the true one")
    flags.DEFINE_string("json", None, "also write the rows here")


def main(argv):
    del argv
    shape = (FLAGS.slices, FLAGS.size, FLAGS.size)
    rows = []
    for i in range(FLAGS.cases):
        rows += measure_case(i, phantom.TUMOR_TYPES[i % len(phantom.TUMOR_TYPES)], shape, FLAGS.predicted_error_mm)
    means = summarize(rows)
    print(f"ART-to-PV registration on {FLAGS.cases} phantom cases of {shape}, error inside the PV liver (mean of cases):")
    print(f"{'region':<26}{'mean mm':>10}{'p95 mm':>10}{'seconds':>10}")
    for row in means:
        print(f"{row['region']:<26}{row['mean_mm']:>10.2f}{row['p95_mm']:>10.2f}{row['seconds']:>10.2f}")
    if FLAGS.json:
        write_text(FLAGS.json, json.dumps({"shape": list(shape), "cases": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
