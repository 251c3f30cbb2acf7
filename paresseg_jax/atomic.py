"""Outputs written whole or not at all: build under a temporary name beside the target, then rename.

A kill at any moment leaves either the old output or the new one: at the
target path, or, for a folder caught between its two renames, set aside as
``.<name>.previous-<tag>``, which the next write into the same folder puts
back. Half-written temporaries (``.<name>.partial-<tag>``) are deleted then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from paresseg_jax.errors import OutputError

PARTIAL_MARK = ".partial-"
PREVIOUS_MARK = ".previous-"
# This process's temporaries in use: several outputs may be open at once in one folder (written
# together, or one inside another), and none of them is a leftover.
_OPEN: set[Path] = set()
# What a full disk, a quota, a failing or read-only device, or a too-long name look like to a writer.
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG}


def _beside(target: Path, mark: str) -> Path:
    return target.with_name(f".{target.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporary_name(name: str) -> str:
    """The longest name a file ``name``'s temporary can have (the largest process id Linux gives), so a name
    too long for the file system is refused before the work, not when its temporary is created."""
    path = _beside(Path(name), PARTIAL_MARK)
    widest = path.name.replace(f"{os.getpid()}-", "4194304-")
    return widest + "".join(Path(name).suffixes)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _writer_alive(path: Path) -> bool:
    """Whether the process whose id is in a temporary's name still runs (another writer's work in progress)."""
    tag = path.name.split(PARTIAL_MARK if PARTIAL_MARK in path.name else PREVIOUS_MARK)[-1]
    pid = int(tag.split("-")[0]) if tag.split("-")[0].isdigit() else -1
    if pid == os.getpid():
        return path.absolute() in _OPEN
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Clean up after killed writers in ``folder``: temporaries are deleted, a folder set aside
    whose replacement never arrived is put back. Returns the paths removed or restored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(".") and not _writer_alive(p)
             and (PARTIAL_MARK in p.name or PREVIOUS_MARK in p.name)]
    for path in found:
        original = folder / path.name[1:].split(PREVIOUS_MARK)[0]
        if PREVIOUS_MARK in path.name and not original.exists():
            os.replace(path, original)
        else:
            _remove(path)
    return found


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yields a temporary path to write ``target`` to (a file, or a folder when ``directory``).

    On success it replaces ``target``; on any exception it is deleted and
    ``target`` is left as it was. A folder replaces an existing folder by two
    renames (old aside, new in), so a reader sees one or the other.
    The temporary keeps ``target``'s suffixes, so writers that pick a format
    from the file name (SimpleITK, nibabel) still do.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    tmp = _beside(target, PARTIAL_MARK)
    tmp = tmp if directory else tmp.with_name(tmp.name + "".join(target.suffixes))
    _OPEN.add(tmp)
    if directory:
        tmp.mkdir()
    try:
        try:
            yield tmp
        except OSError as error:
            if error.errno not in WRITE_FAILURES:
                raise
            raise OutputError(f"cannot be written ({os.strerror(error.errno)}); nothing of it was kept", path=target,
                              fix="free space on that disk (or raise the quota), or write elsewhere") from None
        except OutputError as error:  # a writer that names its file names our temporary: the user knows the target
            if error.path != str(tmp):
                raise
            raise OutputError(error.problem, path=target, fix=error.fix) from None
        if directory and target.exists():
            old = _beside(target, PREVIOUS_MARK)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        _OPEN.discard(tmp)
        if tmp.exists():
            _remove(tmp)


def synced(path: str | os.PathLike) -> None:
    """Flush a written file to its disk, so a full disk or a failing device is an error now, before the rename,
    not lost data later (file systems may allocate blocks only when they write them back)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """``Path.write_text`` whole or not at all."""
    with atomic_path(target) as tmp:
        data = text.encode()
        with open(tmp, "wb") as stream:
            if stream.write(data) != len(data):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp))
        synced(tmp)
    return Path(target)
