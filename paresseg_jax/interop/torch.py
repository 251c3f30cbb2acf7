"""PyTorch reference `state_dict` <-> Flax variables of `models.create('paresseg' | 'resseg')`.

The Flax modules carry the reference's path segments as names, so a torch key
``a.b.0.weight`` lives at ``params/a/b/0/kernel``; only the leaf name and the
array layout change: conv kernels OIHW -> HWIO, transposed-conv kernels
``(in, out, kh, kw)`` -> ``(kh, kw, in, out)``, BatchNorm ``weight`` ->
``scale`` and its running statistics -> ``batch_stats`` ``mean``/``var``/
``num_batches_tracked``. `reference_layout` spells out the reference's keys,
shapes and order for any width, so both directions are checked key by key.

torch is imported only by the functions that need it (it is an optional extra).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from paresseg_jax.atomic import atomic_path
from paresseg_jax.errors import BadInputError, MissingInputError

# Reference class name -> our registered model name.
ARCHITECTURES = {"RESNET_phase_att": "paresseg", "RESNET_2D": "resseg"}
# The key that starts each architecture's state_dict (its stem's first conv).
_STEM = {"RESNET_phase_att": "PV_encoder.first.0.weight", "RESNET_2D": "first.0.weight"}
_CLASSIFIER = "final.3.weight"
_SCALES = (1, 2, 4, 8, 8, 8)  # channels of the six encoder scales, in units of the width
_LEVELS = ("second", "third", "fourth", "fifth", "sixth")
_UP_CHANNELS = 16

# (kind of torch module, torch leaf) -> (Flax collection, Flax leaf, axes moving torch layout to Flax).
_LEAVES = {
    ("conv", "weight"): ("params", "kernel", (2, 3, 1, 0)),
    ("conv", "bias"): ("params", "bias", None),
    ("deconv", "weight"): ("params", "kernel", (2, 3, 0, 1)),
    ("bn", "weight"): ("params", "scale", None),
    ("bn", "bias"): ("params", "bias", None),
    ("bn", "running_mean"): ("batch_stats", "mean", None),
    ("bn", "running_var"): ("batch_stats", "var", None),
    ("bn", "num_batches_tracked"): ("batch_stats", "num_batches_tracked", None),
    ("attention", "gamma"): ("params", "gamma", None),
}


class _Layout:
    """Ordered ``torch key -> (shape, kind)`` built in the reference's registration order."""

    def __init__(self):
        self.entries: dict[str, tuple[tuple[int, ...], str]] = {}

    def conv(self, prefix, cin, cout, k, bias=True):
        self.entries[f"{prefix}.weight"] = ((cout, cin, k, k), "conv")
        if bias:
            self.entries[f"{prefix}.bias"] = ((cout,), "conv")

    def deconv(self, prefix, cin, cout):
        self.entries[f"{prefix}.weight"] = ((cin, cout, 4, 4), "deconv")

    def bn(self, prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            self.entries[f"{prefix}.{leaf}"] = ((c,), "bn")
        self.entries[f"{prefix}.num_batches_tracked"] = ((), "bn")

    def conv_bn(self, prefix, cin, cout, first, k=3, bias=True):
        """Conv at index ``first``, BN at ``first + 1`` of a Sequential."""
        self.conv(f"{prefix}.{first}", cin, cout, k, bias)
        self.bn(f"{prefix}.{first + 1}", cout)

    def encoder(self, prefix, in_channels, width):
        self.conv_bn(f"{prefix}first", in_channels, width, 0)
        self.conv_bn(f"{prefix}first", width, width, 3)
        for level, (cin, cout) in zip(_LEVELS, zip(_SCALES[:-1], _SCALES[1:])):
            for block, nin in ((1, cin), (2, cout)):
                name = f"{prefix}{level}_{block}"
                self.conv_bn(f"{name}.bn", nin * width, cout * width, 0)
                self.conv_bn(f"{name}.bn", cout * width, cout * width, 3)
                if nin != cout:
                    self.conv_bn(f"{name}.residual", nin * width, cout * width, 0, k=1, bias=False)

    def fusion_head(self, prefix, channels, attention):
        inter = channels // 4
        self.conv_bn(f"{prefix}.conv5c", channels, inter, 0, bias=False)
        self.conv_bn(f"{prefix}.conv5p", channels, inter, 0, bias=False)
        if attention == "reference":
            self.entries[f"{prefix}.sc.gamma"] = ((1,), "attention")
            self.entries[f"{prefix}.pa.gamma"] = ((1,), "attention")
        self.conv_bn(f"{prefix}.conv51", inter, inter, 0, bias=False)
        self.conv_bn(f"{prefix}.conv52", inter, inter, 0, bias=False)

    def decoder(self, scale_channels, num_classes):
        self.conv_bn("up1", scale_channels[0], _UP_CHANNELS, 0)
        for k in range(2, 7):
            widths = [scale_channels[k - 1]] + [_UP_CHANNELS * 2 ** (k - 2 - i) for i in range(k - 1)]
            for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
                self.deconv(f"up{k}.{i}.deconv.0", cin, cout)
                self.bn(f"up{k}.{i}.deconv.1", cout)
        self.conv_bn("final", 6 * _UP_CHANNELS, 6 * _UP_CHANNELS, 0)
        self.conv("final.3", 6 * _UP_CHANNELS, num_classes, 1)


def reference_layout(arch: str, width: int = 64, in_channels: int = 3, num_classes: int = 2,
                     attention: str = "reference") -> dict[str, tuple[tuple[int, ...], str]]:
    """The reference model's ``state_dict`` as ordered ``key -> (shape, kind)``.

    ``kind`` is 'conv', 'deconv', 'bn' or 'attention'. With ``attention='paper'``
    the fusion heads have no ``gamma`` (the paper's equations have none).
    """
    _check_arch(arch)
    layout = _Layout()
    if arch == "RESNET_2D":
        layout.encoder("", in_channels, width)
        layout.decoder([m * width for m in _SCALES], num_classes)
    else:
        layout.encoder("PV_encoder.", in_channels, width)
        layout.encoder("ART_encoder.", in_channels, width)
        for k, m in enumerate(_SCALES, start=1):
            layout.fusion_head(f"cf{k}", m * width, attention)
        layout.decoder([m * width // 2 for m in _SCALES], num_classes)
    return layout.entries


def reference_layers(layout: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, str]:
    """``torch module name -> kind`` of every layer holding weights in a `reference_layout`, in its order.

    The Flax module at the same path (dots read as ``/``) is that layer's port, so this one table
    serves conversion and the layer-by-layer cross-check (`interop.check`).
    """
    return {key.rsplit(".", 1)[0]: kind for key, (_, kind) in layout.items()}


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not a reference architecture; use one of {sorted(ARCHITECTURES)}")


def _to_numpy(value) -> np.ndarray:
    """A torch tensor (any device, bfloat16 included) or array-like as numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def unwrap_state_dict(checkpoint: Mapping) -> dict:
    """The state_dict inside a ``{'state_dict': ...}`` wrapper, without a DataParallel ``module.`` prefix."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def infer_arch(state_dict: Mapping) -> str:
    """'RESNET_phase_att' or 'RESNET_2D', from the stem key each one has."""
    found = [arch for arch, key in _STEM.items() if key in state_dict]
    if len(found) != 1:
        sample = sorted(state_dict)[:3]
        raise ValueError(f"cannot tell the reference architecture from keys like {sample}: expected exactly one of "
                         + ", ".join(f"{k!r} ({a})" for a, k in _STEM.items()) + "; pass arch=")
    return found[0]


def _shape_of(state_dict: Mapping, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"state_dict has no key {key!r}, which fixes the model's size; is it a reference "
                         f"RESNET_2D / RESNET_phase_att state_dict?")
    return tuple(_to_numpy(state_dict[key]).shape)


def spec_from_state_dict(state_dict: Mapping, arch: str | None = None) -> dict[str, Any]:
    """The saved-model spec (``{'name', 'width', 'in_channels', 'num_classes', 'attention'}``) whose
    ``models.create`` model takes these weights; sizes read from the stem and classifier shapes.

    A phase-attention state_dict without ``gamma`` keys is taken as the paper's attention.
    """
    state_dict = unwrap_state_dict(state_dict)
    arch = arch or infer_arch(state_dict)
    _check_arch(arch)
    width, in_channels = _shape_of(state_dict, _STEM[arch])[:2]
    spec = {"name": ARCHITECTURES[arch], "width": width, "in_channels": in_channels,
            "num_classes": _shape_of(state_dict, _CLASSIFIER)[0]}
    if arch == "RESNET_phase_att":
        spec["attention"] = "reference" if "cf1.sc.gamma" in state_dict else "paper"
    return spec


def arch_from_spec(spec: Mapping[str, Any]) -> str:
    """The reference architecture of a saved-model spec; only `paresseg` and `resseg` have one."""
    for arch, name in ARCHITECTURES.items():
        if spec.get("name") == name:
            return arch
    raise ValueError(f"model {spec.get('name')!r} has no PyTorch reference counterpart; only "
                     f"{sorted(ARCHITECTURES.values())} can be converted")


def _check_keys(got: Mapping, layout: Mapping, where: str) -> None:
    missing = [k for k in layout if k not in got]
    unexpected = [k for k in got if k not in layout]
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected key(s) {unexpected[:5]}"
                        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    if problems:
        raise ValueError(f"{where} does not match the reference layout: " + "; ".join(problems))


def _flatten_variables(variables: Mapping) -> dict[str, Any]:
    """``'collection/a/b/leaf' -> array`` for the ``params`` and ``batch_stats`` collections."""
    flat = {}

    def visit(node, path):
        if isinstance(node, Mapping):
            for name, child in node.items():
                visit(child, path + (str(name),))
        else:
            flat["/".join(path)] = node

    for collection in ("params", "batch_stats"):
        visit(variables.get(collection, {}), (collection,))
    return flat


def _flax_path(key: str, kind: str) -> tuple[str, tuple[int, ...] | None]:
    """``'collection/a/b/leaf'`` of a torch key, and the axes moving its torch layout to Flax's."""
    *path, leaf = key.split(".")
    collection, flax_leaf, axes = _LEAVES[kind, leaf]
    return "/".join([collection, *path, flax_leaf]), axes


def from_torch_state_dict(state_dict: Mapping, arch: str | None = None) -> dict:
    """Flax ``{'params', 'batch_stats'}`` for ``models.create(**spec_from_state_dict(state_dict))``.

    ``state_dict`` maps reference keys to torch tensors or numpy arrays (a ``{'state_dict': ...}``
    wrapper and a ``module.`` prefix are accepted). Every key must be one the reference has, with the
    reference's shape for the sizes read from the stem and classifier; floats keep their dtype.
    """
    state_dict = unwrap_state_dict(state_dict)
    arch = arch or infer_arch(state_dict)
    spec = spec_from_state_dict(state_dict, arch)
    layout = reference_layout(arch, spec["width"], spec["in_channels"], spec["num_classes"],
                              spec.get("attention", "reference"))
    _check_keys(state_dict, layout, f"the {arch} state_dict")
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, (shape, kind) in layout.items():
        value = _to_numpy(state_dict[key])
        if value.shape != shape:
            raise ValueError(f"state_dict key {key!r} has shape {value.shape}, the {arch} layout (width "
                             f"{spec['width']}, {spec['in_channels']} input channels, {spec['num_classes']} "
                             f"classes) needs {shape}")
        path, axes = _flax_path(key, kind)
        if key.endswith("num_batches_tracked"):
            value = value.astype(np.int32)
        elif axes is not None:
            value = value.transpose(axes)
        *parents, leaf = path.split("/")
        node = variables
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = np.array(value, order="C")
    return variables


def to_torch_state_dict(variables: Mapping, arch: str) -> dict:
    """The reference ``state_dict`` (torch tensors, the reference's key order) of Flax ``variables``
    of a `paresseg` (``arch='RESNET_phase_att'``) or `resseg` (``'RESNET_2D'``) model.

    Sizes are read from the variables; a Flax leaf with no reference counterpart (another fusion
    block, extra phases) is an error naming it.
    """
    import torch

    _check_arch(arch)
    flat = _flatten_variables(variables)
    stem = _flax_path(_STEM[arch], "conv")[0]
    classifier = _flax_path(_CLASSIFIER, "conv")[0]
    for path in (stem, classifier):
        if path not in flat:
            raise ValueError(f"variables have no {path!r}; are they a "
                             f"{ARCHITECTURES[arch]!r} model's {{'params', 'batch_stats'}}?")
    _, _, in_channels, width = np.shape(flat[stem])
    num_classes = np.shape(flat[classifier])[-1]
    attention = "paper" if arch == "RESNET_phase_att" and "params/cf1/sc/gamma" not in flat else "reference"
    layout = reference_layout(arch, width, in_channels, num_classes, attention)
    paths = {key: _flax_path(key, kind) for key, (_, kind) in layout.items()}
    _check_keys(flat, {path: key for key, (path, _) in paths.items()}, f"the {ARCHITECTURES[arch]} variables")
    state = {}
    for key, (shape, _) in layout.items():
        path, axes = paths[key]
        value = np.asarray(flat[path])
        if axes is not None:
            value = value.transpose(np.argsort(axes))
        if value.shape != shape:
            raise ValueError(f"variable {path!r} gives {key!r} the shape {value.shape}; the {arch} layout needs "
                             f"{shape}")
        if key.endswith("num_batches_tracked"):
            value = value.astype(np.int64)
        state[key] = torch.from_numpy(np.array(value, order="C"))
    return state


def load_torch_checkpoint(path: str | os.PathLike) -> dict:
    """A reference state_dict read safely from a ``.pth`` file (``weights_only=True``).

    Accepts a bare state_dict, a ``{'state_dict': ...}`` wrapper and a DataParallel ``module.``
    prefix. A file whose unpickling would run arbitrary code (a whole pickled model) is refused.
    """
    import pickle

    import torch

    if not os.path.isfile(path):
        raise MissingInputError("no PyTorch checkpoint here", path=path, fix="give the .pth file's path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        if "Unsupported global" in str(error):
            raise BadInputError(
                f"{path} pickles Python objects (e.g. a whole model) whose loading would run arbitrary code; "
                f"refused. If you trust the file, re-save only its weights where its code is importable: "
                f"torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pth')") from None
        raise BadInputError(f"not a readable PyTorch checkpoint ({type(error).__name__}: {str(error).strip()[:200]})",
                            path=path, fix="give a .pth written by torch.save(model.state_dict(), ...)") from None
    return unwrap_state_dict(checkpoint)


def torch_checkpoint_to_saved_model(checkpoint: str | os.PathLike, output: str | os.PathLike,
                                    arch: str | None = None):
    """Converts a reference ``.pth`` into a saved-model folder (``model_io``) for inference or as a
    training initialisation. Parameters are stored in float32, the models' parameter dtype."""
    from paresseg_jax import model_io

    state_dict = load_torch_checkpoint(checkpoint)
    try:
        spec = spec_from_state_dict(state_dict, arch)
        variables = from_torch_state_dict(state_dict, arch)
    except ValueError as error:
        raise BadInputError(f"not a reference checkpoint this converter knows: {error}", path=checkpoint,
                            fix="give a RESNET_phase_att / RESNET_2D state_dict, or --arch") from None
    variables["params"] = _tree_map(lambda a: a.astype(np.float32), variables["params"])
    variables["batch_stats"] = _tree_map(
        lambda a: a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32), variables["batch_stats"])
    return model_io.save_model(output, spec, variables)


def saved_model_to_torch_checkpoint(model_dir: str | os.PathLike, output: str | os.PathLike):
    """Writes the reference ``state_dict`` of a saved model (or a training workdir's exported model)
    to ``output`` (``.pth``), loadable with ``torch.load(..., weights_only=True)``."""
    import pathlib

    import torch

    from paresseg_jax import model_io

    _, variables, spec = model_io.load_model(model_dir)
    try:
        state_dict = to_torch_state_dict(variables, arch_from_spec(spec))
    except ValueError as error:
        raise BadInputError(str(error), path=model_dir, fix="only ResSeg and PA-ResSeg models convert") from None
    output = pathlib.Path(output).absolute()
    with atomic_path(output) as tmp:
        torch.save(state_dict, tmp)
    return output


def _tree_map(fn, tree):
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, Mapping) else fn(tree)
