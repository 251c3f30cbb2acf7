"""Names that come from data (case ids, DICOM tags, dataset file names) checked before they become file names.

A case id of ``../../x``, ``/etc/x``, ``.`` or one with a newline would put an
output outside its folder or replace the folder itself; one too long fails
only when its temporary (``paresseg_jax.atomic``) is created, after the work.
Every such name passes :func:`file_name` first. Renaming is the caller's
explicit choice (``rename=True``, or within :func:`renaming` as
``paresseg-predict --rename_unsafe`` asks), never silent: each renamed name
is logged with its reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re

from paresseg_jax.atomic import temporary_name
from paresseg_jax.errors import BadInputError

NAME_MAX = 255  # bytes of one path component on ext4, xfs, btrfs, tmpfs, APFS
# The longest suffix any command appends to a name from data (folder predict's probability map).
LONGEST_SUFFIX = "_tumor_prob.nii.gz"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
# Set for a whole command by ``renaming``: its names from data are read deep inside cohort layouts.
_RENAMING = contextvars.ContextVar("renaming", default=False)
log = logging.getLogger(__name__)


def problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name as it is, or None."""
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"{name!r} names a folder, not a file"
    if os.path.isabs(name) or (match := _UNSAFE.search(name)):
        return "it is an absolute path" if os.path.isabs(name) else f"it holds the character {match.group()!r}"
    if name.startswith("."):
        return "it starts with '.' (a hidden file, and the mark of this program's temporaries)"
    longest = len(temporary_name(name + LONGEST_SUFFIX).encode())
    if longest > NAME_MAX:
        return f"it is too long ({len(name.encode())} bytes; at most {len(name.encode()) - longest + NAME_MAX})"
    return None


def renamed(name: str) -> str:
    """``name`` with every unsafe character replaced by ``_``, cut to fit (an empty or dot name becomes ``_``)."""
    name = _UNSAFE.sub("_", str(name)).strip().lstrip(".") or "_"
    while problem(name) is not None:
        name = name[:-1]
    return name


@contextlib.contextmanager
def renaming(allowed: bool = True):
    """Within the block, :func:`file_name` renames an unsafe name (with a warning) instead of refusing it."""
    token = _RENAMING.set(allowed)
    try:
        yield
    finally:
        _RENAMING.reset(token)


def file_name(name, what: str, *, rename: bool = False, path=None, fix: str | None = None) -> str:
    """``name`` when it is a safe file name; else ``renamed(name)`` with ``rename`` (or within
    :func:`renaming`), logged, or a BadInputError naming ``what`` (e.g. "case id of case #3") and why."""
    why = problem(name)
    if why is None:
        return name
    if rename or _RENAMING.get():
        new = renamed(name)
        log.warning("%s %r renamed %r: %s", what, name, new, why)
        return new
    raise BadInputError(f"{what} {name!r} cannot be a file name: {why}", path=path,
                        fix=fix or "give it a plain name of letters, digits, '-' and '_' (paresseg-predict "
                          "--rename_unsafe renames it)")
