"""A header's promised voxel count checked against the file and the memory before anything is allocated.

A NIfTI header of a few hundred bytes can promise 2000^3 float voxels; the
reader would try to allocate 32 GB and end in a MemoryError. The promise is
checked against what the file can hold (gzip cannot shrink data more than
about 1032 times) and against the memory this machine has available; a
DICOM series (thousands of slices of 512 x 512, each file honest) only
against the memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from paresseg_jax.errors import BadInputError

GZIP_MAX_RATIO = 1032  # deflate's best case: 258-byte matches coded in 2 bits


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check(path: str | os.PathLike, size: Sequence[int], pixel_id: int, components: int = 1) -> None:
    """Refuse an image file whose header ``size`` (voxels per axis) and pixel type promise more bytes than
    the file can hold or than the memory available (the reader would need them at once, as float32 too)."""
    path = Path(path)
    voxel_bytes = sitk.Image([1] * 2, pixel_id).GetSizeOfPixelComponent() * components
    count = int(np.prod([int(n) for n in size], dtype=object))
    promised, stored = count * voxel_bytes, path.stat().st_size
    capacity = stored * (GZIP_MAX_RATIO if path.name.lower().endswith(".gz") else 1)
    if not path.name.lower().endswith((".mhd", ".nhdr")) and promised > capacity:
        raise BadInputError(f"header promises {tuple(size)} voxels ({promised:,} bytes), more than the "
                            f"{stored:,}-byte file can hold", path=path, fix="the file is damaged or cut short; "
                            "export it again")
    fits_in_memory(path, size, voxel_bytes)


def fits_in_memory(path: str | os.PathLike, size: Sequence[int], voxel_bytes: int) -> None:
    """Refuse an image (a file, or a DICOM series folder: columns, rows, slices) whose voxels, as stored and as
    float32, would not fit in the memory available."""
    needed = int(np.prod([int(n) for n in size], dtype=object)) * max(voxel_bytes, 4)
    memory = available_memory()
    if memory is not None and needed > memory:
        raise BadInputError(f"image of {tuple(size)} voxels needs {needed / 2**30:.1f} GiB, more than the "
                            f"{memory / 2**30:.1f} GiB of memory available", path=path,
                            fix="crop or downsample it, or run on a machine with more memory")
