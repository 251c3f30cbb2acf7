"""An image file read back before it replaces its target: a short write that reported success is still an error.

SimpleITK's writers do not always report a failed write: on a full disk a
gzip stream can be cut short and ``WriteImage`` returns normally. Each image
the library writes is therefore flushed to disk and read back (the whole
gzip stream for ``.nii.gz``, the size for ``.nii``, a full read otherwise)
while it still has its temporary name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import SimpleITK as sitk

from paresseg_jax.atomic import synced
from paresseg_jax.errors import OutputError, error_line

_NIFTI_HEADER_BYTES = 348


def _stored_bytes(path: Path) -> int:
    """Bytes of header and voxels the file holds, read to its end."""
    if path.name.endswith(".nii.gz"):
        size = 0
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                size += len(chunk)
        return size
    if path.name.endswith(".nii"):
        return path.stat().st_size
    image = sitk.ReadImage(str(path))
    return image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() + _NIFTI_HEADER_BYTES


def check_image_file(written: str | os.PathLike, target: str | os.PathLike, voxel_bytes: int) -> None:
    """Refuse (``OutputError`` naming ``target``) a just-written image file that holds fewer voxel bytes than
    ``voxel_bytes`` or cannot be read back to its end."""
    written = Path(written)
    synced(written)
    try:
        stored = _stored_bytes(written)
    except (OSError, EOFError, zlib.error, RuntimeError) as error:
        stored, why = -1, f"{type(error).__name__}: {error_line(error)}"
    else:
        why = f"{stored} of {voxel_bytes + _NIFTI_HEADER_BYTES} bytes"
    if stored < voxel_bytes + _NIFTI_HEADER_BYTES:
        raise OutputError(f"was written incomplete ({why}); nothing of it was kept", path=target,
                          fix="free space on that disk (or raise the quota), or write the output elsewhere")
