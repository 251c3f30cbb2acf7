"""Whether this caller may start spawned worker processes, which re-run its ``__main__`` first.

A spawned child (preprocessing's pool, Grain's data workers, the ablation's parallel trainings)
imports the parent's main program again, as ``__mp_main__``, before it does any work. A notebook,
``python -c`` or an interactive session has no main file; a console script, ``python -m`` or a script
with an ``if __name__ == "__main__":`` guard re-imports harmlessly. A script without the guard would
start its whole job again in every child (multiprocessing then refuses, and the pool breaks), and
standard input cannot be read twice. There the work runs in this process instead, with one log line.
"""

from __future__ import annotations

import ast
import logging
import os
import sys

log = logging.getLogger(__name__)

GUARD = 'if __name__ == "__main__":'


def _has_main_guard(path: str) -> bool:
    """A top-level ``if __name__ == "__main__":`` in the file (either operand order, any quotes)."""
    try:
        with open(path, "rb") as file:
            tree = ast.parse(file.read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        test = getattr(node, "test", None) if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            operands = [test.left, *test.comparators]
            names = {o.id for o in operands if isinstance(o, ast.Name)}
            values = {o.value for o in operands if isinstance(o, ast.Constant)}
            if names == {"__name__"} and values == {"__main__"}:
                return True
    return False


def spawn_problem() -> str | None:
    """Why spawned workers cannot start from this caller (a sentence), or None when they can."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return None  # embedded interpreter, or `python -m`: children import the module by name
    path = getattr(main, "__file__", None)
    if path is None:
        return None  # notebook, `python -c`, interactive: children skip the main module
    if not os.path.isfile(path):
        return f"the main program ({path}) is not a file a worker process could run again"
    if _has_main_guard(path):
        return None
    return f"{path} has no {GUARD} guard, so every worker process would run the whole script again"


def usable_workers(requested: int, what: str, in_process: int) -> int:
    """`requested`, or `in_process` (the count meaning "no worker processes") when this caller cannot
    spawn any; then logs one warning naming `what` and how to get the workers back."""
    if requested <= in_process:
        return requested
    problem = spawn_problem()
    if problem is None:
        return requested
    log.warning("%s runs in this process: %s. To use %d worker processes, run a file whose calls sit under %s",
                what, problem, requested, GUARD)
    return in_process
