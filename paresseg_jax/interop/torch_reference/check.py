"""Runs oracle-vs-Flax cross-checks in a process of their own; prints one JSON list of error dicts.

Float64 cases need ``JAX_ENABLE_X64=1``, which must not leak into other tests,
hence a separate process. For example:
``JAX_ENABLE_X64=1 python -m paresseg_jax.interop.torch_reference.check '[{"arch": "RESNET_phase_att", "width": 8,
"attention": "reference", "height": 64, "image_width": 64, "seed": 1, "step": true, "dtype": "float64"}]'``
"""

import json
import sys

import jax
import torch

from paresseg_jax.interop.torch_reference import harness


def main(cases: list[dict]) -> list[dict]:
    results = []
    for case in cases:
        case = dict(case)
        dtype = case.pop("dtype", "float32")
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise SystemExit("float64 cases need JAX_ENABLE_X64=1 (64-bit JAX)")
        results.append(harness.compare(**case, dtype=getattr(torch, dtype)))
    return results


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
