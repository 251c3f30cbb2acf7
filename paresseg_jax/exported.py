"""A trained model that travels without this package's model code: its forward pass serialised by `jax.export`.

``<name>.jaxexport/`` holds the forward pass in float32 and in bfloat16 (StableHLO; symbolic batch, height
and width, the last two multiples of 32), the weights it takes as arguments (``weights.msgpack``: baked in as
constants, XLA folds them into other arithmetic and the logits differ from the saved model's by ~1e-8;
passed in, the computation is the saved model's, bit for bit), ``model.json`` (the
phases, channels and classes a caller must know), the run's ``config.json`` where it has one (the
inference settings) and ``MODEL_CARD.md``. `ExportedModel` runs it with `jax.export.deserialize`
alone; it has the ``apply`` / ``phases`` / ``in_channels`` of a Linen module, so inference treats it
as one. What it does not carry: the Python preprocessing (registration, HU window, liver ROI), which
the caller must do as `infer.study` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp

from paresseg_jax.atomic import atomic_path
from paresseg_jax.errors import BadInputError, OutputError

SUFFIX = ".jaxexport"
FORMAT = "jax.export"
FORWARDS = {"float32": "forward_float32.bin", "bfloat16": "forward_bfloat16.bin"}
WEIGHTS = "weights.msgpack"
SPEC_KEYS = ("name", "phases", "in_channels", "num_classes", "attention", "fusion", "phase_dropout")
MULTIPLE = 32  # the models' own padding multiple (models.base.MULTIPLE)


def is_exported(path: str | os.PathLike) -> bool:
    """A folder `export_model` wrote (its ``model.json`` says so)."""
    spec_file = Path(path) / "model.json"
    try:
        return spec_file.is_file() and json.loads(spec_file.read_text(encoding="utf-8")).get("format") == FORMAT
    except ValueError:
        return False


def _forward(module, variables, dtype: str):
    """The serialised forward pass of ``module`` in ``dtype``, taking variables shaped like ``variables``."""
    from paresseg_jax import models, ops

    spec = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ("parent", "name")}
    module = type(module)(**{**spec, "dtype": models.DTYPES[dtype]})
    batch, height, width = jax.export.symbolic_shape(f"b, {MULTIPLE}*h, {MULTIPLE}*w")
    inputs = [jax.ShapeDtypeStruct((batch, height, width, module.in_channels), jnp.float32) for _ in module.phases]
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    with ops.conv_impl("direct"):  # inference's convolutions (`infer.predict.tumor_probability`), not Winograd
        exported = jax.export.export(jax.jit(lambda v, *x: module.apply(v, *x, train=False)))(shapes, *inputs)
    return exported.serialize()


def export_model(source: str | os.PathLike, output: str | os.PathLike, card: str) -> Path:
    """Writes ``output`` (a ``.jaxexport`` folder) from a saved model or training workdir; ``card`` is the text of
    its ``MODEL_CARD.md``. Whole or not at all."""
    from paresseg_jax import model_io
    from paresseg_jax.workdir import CONFIG_FILE

    module, variables, spec = model_io.load_model(source)
    model_dir = model_io.resolve_model_dir(source)
    spec = {k: spec[k] for k in SPEC_KEYS if k in spec}
    spec.update(format=FORMAT, multiple=MULTIPLE, forwards=FORWARDS, phases=list(module.phases),
                in_channels=module.in_channels, num_classes=module.num_classes)
    output = Path(output).absolute()
    with atomic_path(output, directory=True) as tmp:
        for dtype, name in FORWARDS.items():
            (tmp / name).write_bytes(_forward(module, variables, dtype))
        (tmp / WEIGHTS).write_bytes(flax.serialization.msgpack_serialize(jax.device_get(variables)))
        (tmp / "model.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        (tmp / "MODEL_CARD.md").write_text(card, encoding="utf-8")
        for folder in (Path(source), model_dir.parent):
            if (folder / CONFIG_FILE).is_file():
                shutil.copyfile(folder / CONFIG_FILE, tmp / CONFIG_FILE)
                break
    return output


def export_run(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """`export_model` with the card of the run ``source`` comes from: its config, split and, where it was
    scored (``summary.json`` beside the model), its test metrics."""
    from paresseg_jax import model_io
    from paresseg_jax.summary import SUMMARY_FILE
    from paresseg_jax.workdir import read_config, read_split

    model_dir = model_io.resolve_model_dir(source)
    output = Path(output).absolute()
    if output in (Path(source).absolute(), model_dir, model_dir.parent) or model_dir.is_relative_to(output):
        raise OutputError("the export would replace the model it is made from", path=output,
                          fix="give a new folder name, e.g. model.jaxexport")
    run = next((f for f in (model_dir, model_dir.parent) if read_config(f) is not None), model_dir.parent)
    summary_file = run / SUMMARY_FILE
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
    module, spec, _ = model_io.check_model(model_dir)
    spec = {**spec, "phases": list(module.phases), "in_channels": module.in_channels, "num_classes": module.num_classes}
    return export_model(source, output, model_card(spec, read_config(run), read_split(run), summary))


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedModel:
    """A deserialised forward pass with a Linen module's calling convention: ``apply(variables, *inputs,
    train=False)`` (``variables``: the weights `load_exported` read), inputs NHWC of any height and width
    (zero-padded to multiples of 32, logits cropped back, as the models do)."""

    path: Path
    phases: tuple[str, ...]
    in_channels: int
    num_classes: int
    dtype: str
    forward: Any = dataclasses.field(repr=False)

    def apply(self, variables, *inputs, train: bool = False):
        if train:
            raise ValueError("an exported model runs inference only (train=False)")
        height, width = inputs[0].shape[1:3]
        pad = ((0, 0), (0, -height % MULTIPLE), (0, -width % MULTIPLE), (0, 0))
        logits = self.forward.call(variables, *[jnp.pad(jnp.asarray(x, jnp.float32), pad) for x in inputs])
        return logits[:, :height, :width]


def load_exported(path: str | os.PathLike, dtype: str = "float32") -> tuple[ExportedModel, dict, dict]:
    """``(model, variables, spec)`` like `model_io.load_model`, from an `export_model` folder; no model code
    imported."""
    path = Path(path).absolute()
    spec = json.loads((path / "model.json").read_text(encoding="utf-8"))
    if dtype not in spec.get("forwards", {}):
        raise BadInputError(f"has no {dtype} forward pass", path=path, fix=f"use one of {sorted(spec['forwards'])}")
    try:
        forward = jax.export.deserialize(bytearray((path / spec["forwards"][dtype]).read_bytes()))
        variables = flax.serialization.msgpack_restore((path / WEIGHTS).read_bytes())
    except (OSError, ValueError, RuntimeError) as error:
        raise BadInputError(f"the exported forward pass cannot be read ({error})", path=path,
                            fix="export the model again with paresseg-export") from None
    model = ExportedModel(path, tuple(spec["phases"]), int(spec["in_channels"]), int(spec["num_classes"]), dtype,
                          forward)
    return model, variables, {k: v for k, v in spec.items() if k in SPEC_KEYS}


def model_card(spec: Mapping, config: Mapping | None, split: Mapping | None, summary: Mapping | None) -> str:
    """``MODEL_CARD.md``: architecture and phases, training data and split, protocol, test metrics with n,
    intended use. Facts the run does not record are said to be unknown, never guessed."""
    data, train, evaluate = (config or {}).get("data", {}), (config or {}).get("train", {}), (config or {}).get("eval", {})
    lines = ["# Model card", "", "## Model",
             f"- Architecture: `{spec.get('name')}`" + (f", fusion block `{spec['fusion']}`" if spec.get("fusion") else "")
             + (f", attention `{spec['attention']}`" if spec.get("attention") else ""),
             f"- Input phases (in this order): {', '.join(spec.get('phases', []))}; {spec.get('in_channels')} "
             "adjacent slices each (2.5D), HU windowed to [0, 1], other phases registered to PV",
             f"- Output: {spec.get('num_classes')}-class logits per pixel (tumor = class 1)",
             "", "## Training data"]
    if config:
        lines += [f"- Cohort: `{data.get('cohort_dir') or data.get('cache_dir')}`",
                  f"- Loss `{train.get('loss')}`, {train.get('num_steps')} steps, batch {train.get('batch_size')}, "
                  f"learning rate {train.get('learning_rate')}, phase dropout {train.get('phase_dropout', 0.0)}"]
    else:
        lines.append("- Not recorded (a converted or hand-saved model)")
    lines += ["", "## Split and protocol"]
    if split:
        lines.append(f"- Fold {split.get('fold')} of {split.get('num_folds')}: {len(split.get('train', []))} training, "
                     f"{len(split.get('validation', []))} validation, {len(split.get('test', []))} test cases "
                     "(disjoint; nothing chosen on test cases)")
    else:
        lines.append("- Not recorded")
    if evaluate:
        lines.append(f"- Inference: checkpoint `{evaluate.get('checkpoint')}`, ROI `{evaluate.get('roi')}`, "
                     f"mode `{evaluate.get('mode')}`, tumor where p >= {evaluate.get('threshold')}")
    lines += ["", "## Test metrics"] + _metrics_lines(summary)
    lines += ["", "## Intended use",
              "Research on liver tumor segmentation from multi-phase CT. Not a medical device and not for "
              "diagnosis or treatment decisions. The artifact holds the network only: registration, HU "
              "window and liver ROI must be done as `paresseg_jax.infer.study` does, before it runs."]
    return "\n".join(lines) + "\n"


def _metrics_lines(summary: Mapping | None) -> list[str]:
    overall = (summary or {}).get("summary") or {}
    scored = overall.get("all") if isinstance(overall.get("all"), Mapping) else overall
    if not scored:
        return ["- None recorded for this run (score it with paresseg-evaluate first)"]
    lines = []
    for name, value in sorted(scored.items()):
        if isinstance(value, Mapping) and "mean" in value:
            lines.append(f"- {name}: mean {value['mean']:.4g} (n = {value.get('n', '?')})")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"- {name}: {value:.4g}")
    return lines or ["- None recorded"]

