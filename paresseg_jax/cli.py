"""How every launcher (``launch/``) starts: environment set-up, then absl's app with a `--help` about it.

A console script (``paresseg-train``) runs the launcher's ``run()`` from a
generated ``__main__`` without a docstring and under another name than the
launcher's module, so absl's ``--help`` would print neither the launcher's
usage text nor its flags. `run_app` gives ``__main__`` the launcher's
docstring and makes the launcher's flags the key flags of ``sys.argv[0]``,
the name absl looks up (``python launch/train.py --help`` already works).
Library INFO logs (orbax, grain, jax's backend probing) stay out of the
launchers' output unless ``--verbosity`` is given. An error the user can
fix (a ``PareSegError``: it names the file and the fix) ends the run with
that one line and exit status 2, not a traceback; a FileNotFoundError not
(yet) of that kind with its one line and status 1; Ctrl-C with one line and
status 130; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from paresseg_jax import compilation_cache, config_files, huge_pages
from paresseg_jax.errors import PareSegError

# Flags defined by `define_config_flag` belong to the launcher that calls it (they show in its --help).
flags.disclaim_key_flags()


def run_app(main: Callable[[list[str]], object] | str, *, huge_page_malloc: bool = True,
            cache_compilations: bool = True, argv: Sequence[str] | None = None) -> None:
    """`app.run(main)` after the optional huge-page restart and persistent compilation cache.

    `main` may be given as ``"module:function"``, imported only after the restart (not twice); such a module
    may define its flags in ``define_flags()``, called here before they are parsed.
    """
    if huge_page_malloc:
        huge_pages.restart_with_huge_pages()
    if isinstance(main, str):
        module_name, function_name = main.split(":")
        module = importlib.import_module(module_name)
        getattr(module, "define_flags", lambda: None)()
        main = getattr(module, function_name)
    if cache_compilations:
        compilation_cache.enable()
    _describe_in_help(sys.modules[main.__module__])
    app.run(_launcher_main(main), argv=argv)


USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # what a shell reports for a command ended by SIGINT


def _launcher_main(main):
    """`main` with library logs at WARNING by default, exiting on a PareSegError with its message (status 2)
    and on another FileNotFoundError with its message (status 1)."""

    @functools.wraps(main)
    def checked_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except PareSegError as error:  # before FileNotFoundError: MissingInputError is both
            print(f"{Path(sys.argv[0]).name}: error: {error.message}", file=sys.stderr)
            raise SystemExit(USER_ERROR_STATUS) from None
        except FileNotFoundError as error:
            raise SystemExit(f"{Path(sys.argv[0]).name}: error: {error}") from None
        except KeyboardInterrupt:  # Ctrl-C: one line; every output is whole or absent (atomic), so nothing to undo
            print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
            raise SystemExit(INTERRUPTED_STATUS) from None

    return checked_main


def _describe_in_help(module) -> None:
    """Show `module`'s docstring and flags in `--help` when it is not `__main__` itself."""
    main_module = sys.modules["__main__"]
    if module is main_module:
        return
    main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def define_config_flag(help_string: str, name: str = "config") -> flags.FlagHolder:
    """ml_collections' ``--config`` flag (with ``--config.<field>=value`` overrides) that also takes built-in names."""
    holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
    flags.FLAGS[name].parser = config_files.NamedConfigParser(flags.FLAGS[name].parser, name)
    return holder
