"""Experiment config files, found by built-in name (``paresseg``) or by path (``my/exp.py``).

The repository's ``configs/`` folder is installed as the package
``paresseg_jax_configs`` (a name no other project claims); its files are
found here by name, never imported as a package, so the library does not
depend on them and a user's own config file works the same way. As with
ml_collections' ``--config`` flag, ``spec:arg`` passes ``arg`` to the file's
``get_config``.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

import ml_collections
from absl import flags

from paresseg_jax.errors import PareSegError

BUILTIN_PACKAGE = "paresseg_jax_configs"


def builtin_dir() -> Path:
    """The folder of the built-in configs (located without importing them)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PareSegError(f"the built-in configs ({BUILTIN_PACKAGE}) are not installed",
                           fix="install the package (pip install -e .) or give a config file's path")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_names() -> list[str]:
    """Names accepted for ``--config`` besides paths: the built-in files without ``.py``."""
    return sorted(p.stem for p in builtin_dir().glob("*.py") if not p.stem.startswith("_"))


def resolve(spec: str) -> str:
    """``spec`` with a built-in name replaced by its file's path (``name:arg`` keeps ``:arg``)."""
    target, colon, arg = spec.partition(":")
    if target.endswith(".py") or "/" in target or Path(target).is_file():
        if not Path(target).is_file():
            raise PareSegError("no such config file", path=target,
                               fix=f"give an existing .py file or a built-in name: {', '.join(builtin_names())}")
        return spec
    path = builtin_dir() / f"{target}.py"
    if not path.is_file():
        raise PareSegError(f"unknown config {target!r}",
                           fix=f"give a built-in name ({', '.join(builtin_names())}) or a .py file's path")
    return f"{path}{colon}{arg}"


def load(spec: str) -> ml_collections.ConfigDict:
    """The ``get_config()`` of a built-in name or config file path (``spec:arg`` calls ``get_config(arg)``)."""
    path, colon, arg = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"paresseg_jax_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([arg] if colon else []))


def unknown_override(config: ml_collections.ConfigDict, argv, name: str = "config") -> str | None:
    """Why the first ``--<name>.a.b=value`` in `argv` names no field of `config`, or None when all do.

    ml_collections finds out too, but only as a traceback from inside flag parsing.
    """
    prefix = f"--{name}."
    for arg in argv:
        if not arg.startswith(prefix):
            continue
        node, path = config, arg[len(prefix):].split("=", 1)[0]
        for depth, field in enumerate(path.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or field not in node:
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                where = ".".join([name, *path.split(".")[:depth]])
                close = difflib.get_close_matches(field, known, n=1)
                hint = f"did you mean {where}.{close[0]}?" if close else f"{where} has: {', '.join(known) or 'no fields'}"
                return f"--{name}.{path}: {where} has no field {field!r}; {hint}"
            node = node[field]
    return None


class NamedConfigParser(flags.ArgumentParser):
    """Wraps ml_collections' ``--config`` parser so that it also takes built-in names.

    A bad value, or an override of a field the config lacks, becomes a ValueError, which
    absl reports as a one-line flag error.
    """

    def __init__(self, file_parser: flags.ArgumentParser, name: str = "config"):
        self._file_parser = file_parser
        self._name = name

    def parse(self, argument):
        try:
            path = resolve(argument)
        except PareSegError as error:
            raise ValueError(error.message) from None
        config = self._file_parser.parse(path)
        problem = unknown_override(config, sys.argv, self._name)
        if problem:
            raise ValueError(problem)
        return config

    def flag_type(self):
        return self._file_parser.flag_type()
