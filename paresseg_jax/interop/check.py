"""Where a PyTorch model and its JAX port part ways: every layer's output, and its parameter gradients, side by side.

Both run the same weights on the same input. PyTorch's layer outputs come from forward hooks, the JAX
model's from Flax's ``capture_intermediates``; layers are paired by the converter's table
(`interop.torch.reference_layers`: a torch module ``a.b.0`` is the Flax module ``a/b/0``), so a
checkpoint that converts is a model that can be checked. Differences are the largest absolute one and
that over the largest torch value of the tensor; the first layer in PyTorch's execution order whose
relative difference exceeds the tolerance is where the two part ways (later layers inherit it).
Needs torch (the ``torch`` extra).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Mapping

import flax
import jax
import numpy as np
import torch

from paresseg_jax import losses, models
from paresseg_jax.errors import BadInputError, MissingInputError, PareSegError
from paresseg_jax.interop import torch as interop

TOLERANCES = {"float32": 1e-4, "float64": 1e-9}
# A parameter whose gradient is nearly zero (a conv bias before a BatchNorm) is compared against this
# fraction of the largest gradient anywhere, not against its own rounding noise.
GRAD_FLOOR = 1e-3
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _difference(got, want, floor: float = 0.0) -> tuple[float, float]:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    diff = float(np.abs(got - want).max(initial=0.0))
    scale = max(float(np.abs(want).max(initial=0.0)), floor)
    return diff, diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def _nhwc(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _keep(outputs: dict, name: str, module, inputs, output) -> None:
    if name not in outputs and isinstance(output, torch.Tensor):
        outputs[name] = _nhwc(output)


def torch_outputs(model: torch.nn.Module, layers, inputs) -> tuple[dict, np.ndarray]:
    """Eval-mode outputs of the modules named in ``layers`` (in execution order, NHWC) and the logits."""
    modules = dict(model.named_modules())
    outputs: dict = {}
    hooks = [modules[name].register_forward_hook(functools.partial(_keep, outputs, name))
             for name in layers if name in modules]
    try:
        model.eval()
        with torch.no_grad():
            logits = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, _nhwc(logits)


def jax_outputs(module, variables, arrays) -> tuple[dict, np.ndarray]:
    """Eval-mode output of every Flax module (``a.b.0 -> NHWC``) and the logits, in one compiled call."""
    def run(variables, *arrays):
        return module.apply(variables, *arrays, train=False, capture_intermediates=True, mutable=["intermediates"])

    logits, state = jax.jit(run, compiler_options=models.UNOPTIMIZED)(variables, *arrays)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state["intermediates"]))
    return ({".".join(path[:-1]): np.asarray(value[0]) for path, value in flat.items()
             if path[-1] == "__call__" and isinstance(value[0], jax.Array)},
            np.asarray(logits))


def gradients(model: torch.nn.Module, module, variables, inputs, label, arch: str) -> tuple[dict, dict]:
    """Cross-entropy parameter gradients of a train-mode forward, torch's and JAX's, under torch's keys.
    ``model`` is left untouched (a copy runs, so its BatchNorm statistics stay)."""
    model = copy.deepcopy(model).train()
    torch.nn.functional.cross_entropy(model(*inputs), label).backward()
    want = {k: p.grad.detach().cpu().numpy() for k, p in model.named_parameters() if p.grad is not None}

    def loss(params, *arrays):
        logits, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, *arrays,
                                 train=True, mutable=["batch_stats"])
        return losses.cross_entropy(logits, label.numpy())

    grads = jax.jit(jax.grad(loss), compiler_options=models.UNOPTIMIZED)(variables["params"], *[_nhwc(x) for x in inputs])
    got = interop.to_torch_state_dict({"params": grads, "batch_stats": variables["batch_stats"]}, arch)
    return {k: v.numpy() for k, v in got.items() if k in want}, want


def jax_counterpart(model: torch.nn.Module, dtype: str):
    """(arch, Flax module, variables) converted from ``model``'s state_dict by the converter."""
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise PareSegError("a float64 cross-check needs 64-bit JAX",
                           fix="set JAX_ENABLE_X64=1 (or jax.config.update('jax_enable_x64', True) before any JAX work)")
    state = model.state_dict()
    try:
        arch = interop.infer_arch(state)
        spec = interop.spec_from_state_dict(state, arch)
        variables = interop.from_torch_state_dict(state, arch)
    except ValueError as error:
        raise PareSegError(f"the PyTorch module's state_dict does not convert: {error}",
                           fix="give a module with the reference's layer names (RESNET_phase_att or RESNET_2D)") from None
    options = {k: v for k, v in spec.items() if k != "name"}
    return arch, models.create(spec["name"], **options, dtype=dtype), variables


def load_torch_model(torch_module: str | None = None, torch_kwargs: str = "{}", *, weights: str | None = None,
                     arch: str = "RESNET_phase_att", width: int = 8, attention: str = "reference",
                     seed: int = 0) -> torch.nn.Module:
    """The PyTorch side: the class ``path/to/file.py:ClassName`` built with the JSON ``torch_kwargs``, or the
    packaged oracle (``arch``, ``width``, ``attention``); then ``weights`` (a .pth state_dict), else random
    weights from ``seed`` with non-trivial BatchNorm statistics and attention gammas."""
    from paresseg_jax.interop.torch_reference import harness

    if torch_module is None:
        model = harness.reference_model(arch, width, attention, seed)
    else:
        try:
            kwargs = json.loads(torch_kwargs)
        except ValueError as error:
            raise PareSegError(f"--torch_kwargs={torch_kwargs!r} is not JSON ({error})",
                               fix='give an object, e.g. \'{"nc": 64}\'') from None
        torch.manual_seed(seed)
        model = harness.randomize(_class_from_file(torch_module)(**kwargs), seed + 1)
    if weights:
        try:
            model.load_state_dict(interop.load_torch_checkpoint(weights))
        except RuntimeError as error:
            raise BadInputError(f"the weights do not fit the PyTorch module ({str(error).strip()[:300]})",
                                path=weights, fix="give the module's own checkpoint, or its constructor arguments") from None
    return model


def _class_from_file(spec: str):
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise PareSegError(f"--torch_module={spec!r} is not path/to/file.py:ClassName", fix="name the file and class")
    if not os.path.isfile(path):
        raise MissingInputError("no such Python file (--torch_module)", path=path, fix="give path/to/file.py:ClassName")
    module_spec = importlib.util.spec_from_file_location(f"crosscheck_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not isinstance(getattr(module, name, None), type):
        raise PareSegError(f"{path} defines no class {name!r}", path=path, fix="name a torch.nn.Module class it defines")
    return getattr(module, name)


def _layer_table(arch: str, module) -> dict[str, str]:
    layout = interop.reference_layout(arch, 1, module.in_channels, module.num_classes,
                                      getattr(module, "attention", "reference"))
    return interop.reference_layers(layout)


def _first_above(rows: list[dict], tolerance: float) -> str | None:
    return next((row["layer"] for row in rows if not row["max_rel"] <= tolerance), None)


def crosscheck(model: torch.nn.Module, *, dtype: str = "float32", batch: int = 2, size: int = 64, seed: int = 0,
               grads: bool = False, tolerance: float | None = None, inputs=None) -> dict:
    """Runs ``model`` (any torch module with the reference's layer names and state_dict) and its converted JAX
    port on one input and returns ``{'dtype', 'tolerance', 'outputs': [rows], 'grads': [rows],
    'first_divergent', 'first_divergent_grad'}``; a row is ``{'layer', 'kind', 'shape', 'max_abs', 'max_rel'}``.

    ``inputs``: NCHW tensors, one per phase (default: uniform [0, 1] from ``seed``). ``model`` is cast to
    ``dtype`` in place ('float32' | 'float64'; the latter needs 64-bit JAX).
    """
    if dtype not in TORCH_DTYPES:
        raise PareSegError(f"dtype={dtype!r} is not one the cross-check runs", fix=f"use one of {sorted(TORCH_DTYPES)}")
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
    model = model.to(TORCH_DTYPES[dtype])
    arch, module, variables = jax_counterpart(model, dtype)
    generator = torch.Generator().manual_seed(seed)
    if inputs is None:
        inputs = [torch.rand(batch, module.in_channels, size, size, generator=generator, dtype=TORCH_DTYPES[dtype])
                  for _ in module.phases]
    table = _layer_table(arch, module)
    want, want_logits = torch_outputs(model, table, inputs)
    got, got_logits = jax_outputs(module, variables, [_nhwc(x) for x in inputs])
    rows = [_row(name, table[name], got.get(name), value) for name, value in want.items()]
    rows.append(_row("logits", "output", got_logits, want_logits))
    report = {"dtype": dtype, "tolerance": tolerance, "outputs": rows, "grads": [],
              "first_divergent": _first_above(rows, tolerance), "first_divergent_grad": None}
    if grads:
        label = (torch.rand(inputs[0].shape[0], *inputs[0].shape[2:], generator=generator) > 0.7).long()
        got_grads, want_grads = gradients(model, module, variables, inputs, label, arch)
        floor = GRAD_FLOOR * max(float(np.abs(g).max(initial=0.0)) for g in want_grads.values())
        report["grads"] = [_row(key, "grad", got_grads.get(key), value, floor) for key, value in want_grads.items()]
        report["first_divergent_grad"] = _first_above(report["grads"], tolerance)
    return report


def _row(layer: str, kind: str, got, want, floor: float = 0.0) -> dict:
    if got is None:
        return {"layer": layer, "kind": kind, "shape": list(np.shape(want)), "max_abs": None, "max_rel": float("inf"),
                "missing": "no JAX counterpart"}
    max_abs, max_rel = _difference(got, want, floor)
    return {"layer": layer, "kind": kind, "shape": list(np.shape(want)), "max_abs": max_abs, "max_rel": max_rel}


def format_report(report: Mapping) -> str:
    """The table ``paresseg-crosscheck`` prints: every layer, then the verdict."""
    lines = [f"{'layer':<34} {'kind':<9} {'shape':<18} {'max abs':>10} {'max rel':>10}"]
    for row in [*report["outputs"], *report["grads"]]:
        flag = "  <-- first above tolerance" if row["layer"] in (report["first_divergent"],
                                                                 report["first_divergent_grad"]) else ""
        max_abs = "-" if row["max_abs"] is None else f"{row['max_abs']:.2e}"
        lines.append(f"{row['layer']:<34} {row['kind']:<9} {'x'.join(map(str, row['shape'])):<18} {max_abs:>10} "
                     f"{row['max_rel']:>10.2e}{flag}")
    lines.append(_verdict("outputs", report["first_divergent"], report))
    if report["grads"]:
        lines.append(_verdict("parameter gradients", report["first_divergent_grad"], report))
    return "\n".join(lines)


def _verdict(what: str, first: str | None, report: Mapping) -> str:
    within = f"{report['tolerance']:.0e} relative ({report['dtype']})"
    return f"{what}: first layer above {within}: {first}" if first else f"{what}: all within {within}"
