"""Every config field the code reads is declared in ``config_defaults`` (an AST scan of the library, the
launchers and configs/): a read of an undeclared field would fail for a user, or silently take a ``.get``
fallback, so it fails here first."""

import ast
import json
import re
from pathlib import Path

import ml_collections
import pytest

from paresseg_jax import config_defaults
from paresseg_jax.workdir import CONFIG_FILE, read_config

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("paresseg_jax", "launch", "configs")
CONFIG_NAMES = {"config", "cfg"}  # names that hold a whole config in this code base
SECTION_NAMES = {"model", "data", "train", "eval"}
# Names that hold one section of a config: data = config.data; data.get("preprocess").
SECTION_ALIASES = {"eval_config": "eval", "data": "data"}
# What a ConfigDict answers besides its fields: reading these is not reading a field.
CONFIG_METHODS = {name for name in dir(ml_collections.ConfigDict) if not name.startswith("_")}


def _read_path(node: ast.AST) -> list[str] | None:
    """The field names of an attribute chain ``config.a.b`` (or ``config.a.get("b")``, ``config.a["b"]``)
    rooted at a config name, outermost last; None for anything else."""
    path = []
    while True:
        if isinstance(node, ast.Attribute):
            path.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            path.append(node.slice.value)
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            path.append(node.args[0].value)
            node = node.func.value
        else:
            break
    if not isinstance(node, ast.Name) or not path:
        return None
    path.reverse()
    if node.id in CONFIG_NAMES and path[0] in SECTION_NAMES:
        return path
    if node.id in SECTION_ALIASES:
        return [SECTION_ALIASES[node.id], *path]
    return None


def undeclared_reads(source: str, defaults: ml_collections.ConfigDict) -> list[str]:
    """Dotted config fields read in ``source`` that ``defaults`` does not declare (outermost chains only)."""
    tree = ast.parse(source)
    inner = {id(child) for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
             if isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)) and _read_path(node) is not None}
    found = []
    for node in ast.walk(tree):
        path = _read_path(node) if id(node) not in inner or isinstance(node, ast.Call) else None
        if path is None:
            continue
        missing = _first_undeclared(path, defaults)
        if missing and missing.rsplit(".", 1)[-1] not in CONFIG_METHODS:
            found.append(missing)
    return sorted(set(found))


def _first_undeclared(path: list[str], defaults: ml_collections.ConfigDict) -> str | None:
    """The dotted prefix of ``path`` down to its first undeclared name; None when all of it is declared (or a
    declared leaf, a tuple or a string, is reached: what follows is that value's own attribute)."""
    level = defaults
    for depth, name in enumerate(path):
        if not isinstance(level, ml_collections.ConfigDict):
            return None
        if name not in level:
            return ".".join(path[: depth + 1])
        level = level[name]
    return None


# A field named in a message or docstring: "set config.data.preprocess.roi_source to ...".
NAMED_FIELD = re.compile(r"\bconfig\.((?:model|data|train|eval)(?:\.[A-Za-z_]\w*)+)")


def undeclared_names(source: str, defaults: ml_collections.ConfigDict) -> list[str]:
    """Dotted config fields that the strings of ``source`` (messages, docstrings) name but ``defaults`` lacks."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [_first_undeclared(dotted.split("."), defaults) for dotted in NAMED_FIELD.findall(node.value)]
    return sorted(set(found) - {None})


def _sources():
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_field_read_is_declared(path):
    assert undeclared_reads(path.read_text(encoding="utf-8"), config_defaults.get_config()) == []


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_field_a_message_names_is_declared(path):
    assert undeclared_names(path.read_text(encoding="utf-8"), config_defaults.get_config()) == []


def test_the_scan_finds_an_undeclared_field():
    source = "def f(config):\n    return config.eval.thresold, config.data.get('cohort'), config.train['no_such']\n"
    assert undeclared_reads(source, config_defaults.get_config()) == ["data.cohort", "eval.thresold", "train.no_such"]


def test_the_scan_finds_an_undeclared_field_named_in_a_message():
    source = 'raise ValueError("set config.data.preprocess.roi_sourc or config.eval.threshold")'
    assert undeclared_names(source, config_defaults.get_config()) == ["data.preprocess.roi_sourc"]


def test_the_scan_accepts_declared_fields_and_config_methods():
    source = "config.eval.threshold; config.data.misregistration.shift_mm; config.model.phases.index('pv'); config.train.to_dict()"
    assert undeclared_reads(source, config_defaults.get_config()) == []


def test_a_saved_config_reads_merged_onto_the_defaults(tmp_path):
    # A run saved before data.preprocess and eval.checkpoint were declared, with a changed threshold.
    saved = {"data": {"target": "liver"}, "eval": {"threshold": 0.3}, "model": {"fusion": None}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    config = read_config(tmp_path)
    defaults = config_defaults.get_config()
    assert (config["data"]["target"], config["eval"]["threshold"], config["model"]["fusion"]) == ("liver", 0.3, None)
    assert config["eval"]["checkpoint"] == defaults.eval.checkpoint
    assert config["data"]["preprocess"] == json.loads(json.dumps(defaults.data.preprocess.to_dict()))
    assert config["train"]["batch_size"] == defaults.train.batch_size
    assert read_config(tmp_path / "elsewhere") is None
