"""How big a phantom experiment is (the demo's and the ablation's scales), and its cohort at that scale.

A scale fixes the cohort (cases, voxels, folds) together with what is sized
to it (network width, patches, batch, training length), so a workdir's
``demo_scale.json`` / ``ablation_scale.json`` tells what its numbers mean.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import SimpleITK as sitk

from paresseg_jax.data import phantom
from paresseg_jax.data.layouts import read_cohort
from paresseg_jax.errors import PareSegError

COHORT_DIR = "cohort"  # a scaled experiment's phantom cohort, in its workdir


@dataclasses.dataclass(frozen=True)
class DemoScale:
    """How big the demo is: cohort, network width, patches and training length."""

    num_cases: int
    shape: tuple[int, int, int]  # (z, y, x) voxels per case
    width: int
    crop_size: int
    batch_size: int
    tumor_steps: int
    liver_steps: int
    num_folds: int
    worker_count: int


# About 10 minutes on 2 CPU cores (6.7-11 min measured in fresh environments on two VMs).
SMALL = DemoScale(
    num_cases=25, shape=(20, 128, 128), width=8, crop_size=64, batch_size=8,
    tumor_steps=500, liver_steps=150, num_folds=5, worker_count=0,
)
# The paper's widths, patches, batch and a 500-epoch-like schedule: for a GPU.
FULL = DemoScale(
    num_cases=60, shape=(40, 512, 512), width=64, crop_size=224, batch_size=8,
    tumor_steps=40_000, liver_steps=10_000, num_folds=5, worker_count=4,
)


def make_cohort(workdir: Path, scale: DemoScale, seed: int = 0) -> Path:
    """The phantom cohort of ``scale``; one already in ``workdir`` is reused only if it is of that scale."""
    cohort = workdir / COHORT_DIR
    if not (cohort / "manifest.json").is_file():
        phantom.make_cohort(cohort, scale.num_cases, seed=seed, shape=scale.shape, num_folds=scale.num_folds)
        return cohort
    entries = read_cohort(cohort)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(entries[0].phases["pv"]))
    reader.ReadImageInformation()
    found = (len(entries), tuple(reversed(reader.GetSize())))
    if found != (scale.num_cases, tuple(scale.shape)):
        raise PareSegError(f"this workdir's cohort has {found[0]} cases of {found[1]} voxels, not the "
                           f"{scale.num_cases} of {tuple(scale.shape)} asked for", path=cohort,
                           fix="use a new workdir for another scale, or the scale it was made with")
    return cohort
