"""The project's own error type: what a user can cause, with the file and the fix.

Launchers print a ``PareSegError`` as one short message and exit with status 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class PareSegError(Exception):
    """An error the user can fix: ``path`` names the offending file, ``fix`` says what to do."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        return f"{text}; {self.fix}" if self.fix else text


class MissingInputError(PareSegError, FileNotFoundError):
    """A file or folder the user named does not exist or lacks what it should hold."""


class BadInputError(PareSegError, ValueError):
    """An input that exists but cannot be used as it is: damaged, mismatched, or of the wrong kind."""


class OutputError(PareSegError):
    """An output location that cannot be written, or that holds something the run would destroy."""


def error_line(error: BaseException) -> str:
    """The line of an exception's message that says what went wrong, for one-line messages (at most 200 characters).

    Most libraries (orbax, msgpack, pydicom) put it first and details after it; SimpleITK puts its source
    location first ('Exception thrown in SimpleITK ...: file.cxx:99:') and the reason last.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return (lines[-1] if lines[0].startswith("Exception thrown in SimpleITK") else lines[0])[:200]


def read_json(path: str | os.PathLike, fix: str, what: str = ""):
    """The JSON content of a file the user gave; invalid JSON (or not UTF-8) is a ``BadInputError`` naming the
    file, the parser's complaint and ``fix``. ``what`` names the file's role in the message (e.g. 'manifest')."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInputError(f"{what + ' ' if what else ''}is not valid JSON ({error})", path=path, fix=fix) from None
