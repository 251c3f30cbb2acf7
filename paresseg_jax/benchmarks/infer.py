"""Inference throughput: slices/s of the model forward, seconds per volume in full-slice and
overlap-tile modes, optionally beside the PyTorch oracle's whole-slice inference.

Volumes are timed through `infer.predict.predict_volume` (host-side batching,
stitching and all) on `slices` random slices and reported per 60-slice
volume (the paper's studies have ~60 slices of 512x512 in the liver range),
so a CPU run can use a few slices and still give the per-volume figure.
Mode ``roi`` is the cascade's tumor stage: full slices restricted to a liver
ROI (an ellipse of 240 x 200 pixels on every slice of a 512 x 512 volume,
about an adult liver at 0.75 mm pixels), cropped to its box.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from paresseg_jax.benchmarks import torch_device
from paresseg_jax.benchmarks.timing import time_interleaved, xla_flops
from paresseg_jax.infer.predict import predict_volume, tumor_probability

VOLUME_SLICES = 60


def random_volumes(phases, slices: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {p: rng.random((slices, size, size), np.float32) for p in phases}


def liver_ellipse(slices: int, size: int) -> np.ndarray:
    """A stand-in liver ROI: an ellipse with axes 240/512 and 200/512 of the slice, left of centre."""
    y, x = (axis / size for axis in np.ogrid[:size, :size])
    inside = ((y - 0.5) / (120 / 512)) ** 2 + ((x - 0.4) / (100 / 512)) ** 2 <= 1.0
    return np.broadcast_to(inside, (slices, size, size)).astype(np.uint8)


def torch_probability(model, inputs_nhwc) -> callable:
    """The oracle's whole-slice tumor probability (eval mode, no grad) on NCHW copies of a batch."""
    import torch

    target = torch_device.of(model)
    model.eval()
    inputs = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(target) for x in inputs_nhwc]

    def run():
        with torch.no_grad():
            out = torch.softmax(model(*inputs), dim=1)[:, 1]
        torch_device.synchronize(target)
        return out

    return run


def benchmark_infer(module, variables, size: int, slices: int, batch: int, tile: int, stride: int, repeats: int,
                    warmup: int, torch_model=None) -> list[dict]:
    """Rows for the forward pass (`slices_per_s`, `gflops`) and for whole volumes (`volume_s` per 60 slices)."""
    phases = module.phases
    volumes = random_volumes(phases, slices, size)
    variables = jax.device_put(variables)
    rows = []

    # Forward only: one batch of whole slices.
    rng = np.random.default_rng(1)
    stack = [rng.random((batch, size, size, module.in_channels), np.float32) for _ in phases]
    inputs = tuple(jax.device_put(x) for x in stack)
    probability = functools.partial(tumor_probability, module)
    jitted = jax.jit(probability)
    flops = xla_flops(probability, variables, inputs)
    fns = {"jax": lambda: jitted(variables, inputs).block_until_ready()}
    if torch_model is not None:
        fns["torch"] = torch_probability(torch_model, stack)
    for name, t in time_interleaved(fns, repeats, warmup).items():
        rows.append({"part": "forward", "variant": name, "dtype": jnp.dtype(module.dtype).name,
                     "batch": batch, "size": size, "slices_per_s": batch / t["median"],
                     "gflops": flops / t["median"] / 1e9 if flops else None})

    # Whole volumes through predict_volume (compiled on the warm-up call), `batch` slices or tiles per pass
    # (a pixel cap above any padded batch, so the CPU's default cap does not shrink it).
    def volume(mode, roi=None):
        return lambda: predict_volume(module, variables, volumes, roi, mode=mode, tile=tile, stride=stride,
                                      batch_size=batch, batch_pixels=batch * (max(size, tile) + 32) ** 2,
                                      crop_to_roi=roi is not None)

    fns = {"jax full": volume("full"), "jax tile": volume("tile"), "jax roi": volume("full", liver_ellipse(slices, size))}
    if torch_model is not None:
        fns["torch full"] = _torch_volume(torch_model, volumes, batch)
    for name, t in time_interleaved(fns, repeats, warmup).items():
        variant, mode = name.split()
        rows.append({"part": "volume", "variant": variant, "mode": mode, "batch": batch, "size": size,
                     "slices": slices, "slices_per_s": slices / t["median"],
                     "volume_s": t["median"] * VOLUME_SLICES / slices})
    return rows


def _torch_volume(model, volumes: dict, batch: int):
    """Whole-slice torch inference of the same volumes: 2.5D stacks, batches of `batch` slices, results
    copied back to the host as `predict_volume`'s are."""
    import torch

    target = torch_device.of(model)
    model.eval()
    arrays = list(volumes.values())
    depth = arrays[0].shape[0]

    def run():
        out = np.zeros(arrays[0].shape, np.float32)
        with torch.no_grad():
            for start in range(0, depth, batch):
                zs = range(start, min(start + batch, depth))
                inputs = [torch.from_numpy(np.stack([v[np.clip([z - 1, z, z + 1], 0, depth - 1)] for z in zs]))
                          .to(target) for v in arrays]
                out[start:start + len(zs)] = torch.softmax(model(*inputs), dim=1)[:, 1].cpu().numpy()
        return out

    return run
