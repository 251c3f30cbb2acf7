"""Runs the same weights and batch through the oracle and the Flax port and measures the differences.

`compare` is what ``paresseg_jax.interop.torch_reference.check`` runs (in a subprocess, with
``JAX_ENABLE_X64=1`` for float64); `reference_model` also gives the
conversion tests their random weights. Errors are relative Frobenius norms,
``||jax - torch|| / ||torch||``.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import torch

from paresseg_jax import losses, models
from paresseg_jax.interop import torch as interop
from paresseg_jax.interop.torch_reference.networks import RESNET_2D, RESNET_phase_att

ADAM_LR = 5e-4
BN_STATS = ("running_mean", "running_var")


def reference_model(arch: str, width: int, attention: str, seed: int, dtype=torch.float32):
    """An oracle with torch-default conv weights, non-zero gammas and non-trivial BN affine and statistics."""
    torch.manual_seed(seed)
    model = RESNET_phase_att(nc=width, attention=attention) if arch == "RESNET_phase_att" else RESNET_2D(nc=width)
    return randomize(model, seed + 1).to(dtype)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with non-trivial BN affine and statistics and non-zero attention gammas (in place), so that
    no layer of a cross-check is an identity by initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.num_batches_tracked.fill_(int(torch.randint(0, 1000, (), generator=generator)))
            if isinstance(getattr(module, "gamma", None), torch.nn.Parameter):
                module.gamma.normal_(0.0, 0.5, generator=generator)
    return model


def random_batch(arch: str, batch: int, height: int, width: int, seed: int, dtype=torch.float32):
    """Inputs in [0, 1] (NCHW, one per phase) and 0/1 labels."""
    generator = torch.Generator().manual_seed(seed)
    phases = 2 if arch == "RESNET_phase_att" else 1
    inputs = [torch.rand(batch, 3, height, width, generator=generator, dtype=dtype) for _ in range(phases)]
    label = (torch.rand(batch, height, width, generator=generator) > 0.7).long()
    return inputs, label


def flax_counterpart(model):
    """The Flax module and variables converted from the oracle's state_dict."""
    state = model.state_dict()
    spec = interop.spec_from_state_dict(state)
    options = {k: v for k, v in spec.items() if k != "name"}
    if next(model.parameters()).dtype == torch.float64:
        options["dtype"] = "float64"
    return models.create(spec["name"], **options), interop.from_torch_state_dict(state)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def torch_run(model, inputs, label, step: bool) -> dict:
    """Eval logits, then one train-mode forward; with ``step`` also its cross-entropy gradients and the
    state_dict after one Adam step (lr 5e-4). Leaves ``model`` as after that forward (and step)."""
    model.eval()
    with torch.no_grad():
        out = {"eval": model(*inputs).numpy()}
    model.train()
    with torch.set_grad_enabled(step):
        logits = model(*inputs)
    out["train"] = logits.detach().numpy()
    if step:
        loss = torch.nn.functional.cross_entropy(logits, label)
        loss.backward()
        out["loss"] = float(loss.detach())
        out["grads"] = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        torch.optim.Adam(model.parameters(), lr=ADAM_LR).step()
        out["after"] = model.state_dict()
    return out


def flax_run(module, variables, inputs, label, step: bool) -> dict:
    """The same as `torch_run` for the Flax port, in one jitted function (one compilation)."""
    arrays = [nhwc(x) for x in inputs]

    def run(variables, arrays, label):
        def loss_fn(params):
            logits, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, *arrays,
                                           train=True, mutable=["batch_stats"])
            return losses.cross_entropy(logits, label), (logits, updates["batch_stats"])

        out = {"eval": module.apply(variables, *arrays, train=False)}
        if not step:
            out["train"] = loss_fn(variables["params"])[1][0]
            return out
        (out["loss"], (out["train"], stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        adam = optax.adam(ADAM_LR)
        updates, _ = adam.update(grads, adam.init(variables["params"]), variables["params"])
        out["grads"] = {"params": grads, "batch_stats": stats}
        out["after"] = {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}
        return out

    out = jax.jit(run)(variables, arrays, label.numpy())
    return {k: (np.asarray(v).transpose(0, 3, 1, 2) if k in ("eval", "train") else v) for k, v in out.items()}


def _nearly_zero_gradient_keys(arch: str, state) -> set[str]:
    """Tensors whose true gradient is zero or only an epsilon effect, compared absolutely:
    conv biases directly followed by a BatchNorm (every conv bias but the classifier's), and the
    inter-PA gammas, whose reference module scales the ART features by 1 + sigmoid(1) * gamma, a
    scale the next BatchNorm removes in train mode (up to its eps)."""
    spec = interop.spec_from_state_dict(state, arch)
    layout = interop.reference_layout(arch, spec["width"], spec["in_channels"], spec["num_classes"],
                                      spec.get("attention", "reference"))
    return {k for k, (_, kind) in layout.items()
            if (kind == "conv" and k.endswith(".bias") and k != "final.3.bias") or k.endswith(".pa.gamma")}


def errors(arch: str, torch_out: dict, flax_out: dict) -> dict:
    """Relative errors of the logits (eval, train) and, after a step: of the loss, the largest
    per-tensor relative gradient error (``grad_rel``), the largest absolute error of nearly-zero
    gradients over the global gradient norm (``zero_grad_abs``), the largest per-tensor relative
    error of the parameters and BN running statistics after the Adam step."""
    result = {f"logits_{mode}": relative_error(flax_out[mode], torch_out[mode]) for mode in ("eval", "train")}
    if "grads" not in torch_out:
        return result
    torch_grads, torch_after = torch_out["grads"], torch_out["after"]
    jax_grads = interop.to_torch_state_dict(flax_out["grads"], arch)
    jax_after = interop.to_torch_state_dict(flax_out["after"], arch)
    nearly_zero = _nearly_zero_gradient_keys(arch, torch_after)
    global_norm = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in torch_grads.values())))
    result.update({
        "loss": abs(float(flax_out["loss"]) - torch_out["loss"]) / abs(torch_out["loss"]),
        "grad_rel": max(relative_error(jax_grads[k], g) for k, g in torch_grads.items() if k not in nearly_zero),
        "zero_grad_abs": max(float(np.abs(jax_grads[k].numpy() - g.numpy()).max()) / global_norm
                             for k, g in torch_grads.items() if k in nearly_zero),
        "adam_params_rel": max(relative_error(jax_after[k], torch_after[k]) for k in torch_grads),
        "running_stats_rel": max(relative_error(jax_after[k], v) for k, v in torch_after.items()
                                 if k.endswith(BN_STATS)),
        "num_batches_tracked_equal": all(int(jax_after[k]) == int(v) for k, v in torch_after.items()
                                         if k.endswith("num_batches_tracked")),
    })
    return result


def compare(arch: str, width: int, attention: str, height: int, image_width: int, seed: int, step: bool,
            dtype=torch.float32, batch: int = 2) -> dict:
    """Random oracle and batch from ``seed``, converted to Flax, both run; returns `errors`."""
    model = reference_model(arch, width, attention, seed, dtype)
    inputs, label = random_batch(arch, batch, height, image_width, seed + 1, dtype)
    module, variables = flax_counterpart(model)
    flax_out = flax_run(module, variables, inputs, label, step)
    return errors(arch, torch_run(model, inputs, label, step), flax_out)
