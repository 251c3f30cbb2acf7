"""Windows of memory-mapped volumes: the 2.5D slice stacks and crops that training batches and inference tiles read.

Both sides read through these functions, so a training patch and an
inference tile of the same position hold the same voxels: slices past the
volume's ends repeat the end slices, pixels outside the image are 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def check_in_channels(in_channels: int) -> None:
    if not isinstance(in_channels, (int, np.integer)) or in_channels < 1 or in_channels % 2 == 0:
        raise ValueError(f"config.model.in_channels={in_channels!r}: a 2.5D stack needs an odd number of slices (e.g. 3)")


def slice_indices(z: int, depth: int, in_channels: int) -> np.ndarray:
    """Slice indices of the 2.5D stack centred on ``z``, replicated at the volume's ends."""
    check_in_channels(in_channels)
    half = in_channels // 2
    return np.clip(np.arange(z - half, z + half + 1), 0, depth - 1)


def read_window(volume: np.ndarray, zs: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``[len(zs), size, size]`` window of ``volume[zs]`` starting at (y0, x0); zeros outside.

    Reads only the window from a memory-mapped volume, slice by slice (contiguous copies).
    """
    _, height, width = volume.shape
    out = np.zeros((len(zs), size, size), np.float32)
    ya, yb = max(y0, 0), min(y0 + size, height)
    xa, xb = max(x0, 0), min(x0 + size, width)
    if ya < yb and xa < xb:
        for c, z in enumerate(zs):
            out[c, ya - y0 : yb - y0, xa - x0 : xb - x0] = volume[z, ya:yb, xa:xb]
    return out


def displaced_window(
    volume: np.ndarray, zs: np.ndarray, top: int, left: int, size: int, displacement: np.ndarray
) -> np.ndarray:
    """``[len(zs), size, size]`` window of ``volume`` as ``read_window`` reads it, each voxel read
    ``displacement`` voxels away (``[3, len(zs), size, size]``, linear interpolation).

    As in the undisplaced window, slices past the volume's ends repeat the
    end slices and pixels outside the image are 0. Reads only the block the
    displaced positions need from a memory-mapped volume.
    """
    depth = volume.shape[0]
    grid = np.meshgrid(zs.astype(np.float32), top + np.arange(size, dtype=np.float32),
                       left + np.arange(size, dtype=np.float32), indexing="ij")
    z, y, x = (g + d for g, d in zip(grid, displacement))
    z = np.clip(z, 0, depth - 1)
    z0, y0, x0 = (int(np.floor(c.min())) for c in (z, y, x))
    z1 = min(int(np.floor(z.max())) + 2, depth)
    side = max(int(np.floor(y.max())) + 2 - y0, int(np.floor(x.max())) + 2 - x0)
    block = read_window(volume, np.arange(z0, z1), y0, x0, side)
    return ndimage.map_coordinates(block, [z - z0, y - y0, x - x0], order=1, mode="nearest").astype(np.float32)
