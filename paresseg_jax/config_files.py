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

from paresseg_jax import config_defaults
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
    """The ``get_config()`` of a built-in name or config file path (``spec:arg`` calls ``get_config(arg)``),
    checked whole against the declared fields (:func:`check_fields`)."""
    path, colon, arg = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"paresseg_jax_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        config = module.get_config(*([arg] if colon else []))
    except TypeError as error:  # ml_collections refuses a value of another type than the field's default
        raise PareSegError(_wrong_type(error), path=path,
                           fix="give each field a value of its default's type (paresseg_jax.config_defaults)") from None
    check_fields(config, path)
    return config


def _wrong_type(error: TypeError) -> str:
    """ml_collections' refusal of a value of another type than a field's, in one line (its flag parser wraps
    the refusal in the file's traceback, which ends with it)."""
    reason = str(error).strip().splitlines()[-1].removeprefix("TypeError: ")
    return f"a field is given a value of the wrong type ({reason})"


def check_fields(config: ml_collections.ConfigDict, path, name: str = "config") -> None:
    """Refuse a field that ``config_defaults`` does not declare: assigned in a config file, a misspelt field
    name would otherwise be a new field that nothing reads, and the run would go on with the default.
    (ml_collections itself refuses a declared field's value of another type.)"""
    _check_section(config, config_defaults.get_config(), path, name)


def _check_section(section, declared, path, where: str) -> None:
    for field in section.keys():
        if field not in declared:
            close = difflib.get_close_matches(field, list(declared.keys()), n=1)
            hint = f"; did you mean {where}.{close[0]}?" if close else f"; {where} has: {', '.join(sorted(declared))}"
            raise PareSegError(f"{where}.{field} is not a config field{hint}", path=path,
                               fix="every field is declared, with its default, in paresseg_jax.config_defaults")
        nested = (dict, ml_collections.ConfigDict)
        if isinstance(declared[field], ml_collections.ConfigDict) and isinstance(section[field], nested):
            _check_section(section[field], declared[field], path, f"{where}.{field}")


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
        try:
            config = self._file_parser.parse(path)
            check_fields(config, path.partition(":")[0], self._name)
        except TypeError as error:
            raise ValueError(f"{path.partition(':')[0]}: {_wrong_type(error)}") from None
        except PareSegError as error:
            raise ValueError(str(error)) from None
        problem = unknown_override(config, sys.argv, self._name)
        if problem:
            raise ValueError(problem)
        return config

    def flag_type(self):
        return self._file_parser.flag_type()
