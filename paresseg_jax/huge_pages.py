"""Restart a CPU-heavy launcher once with glibc's huge-page malloc.

XLA's CPU runtime allocates a step's buffers afresh on every call (about
2.2 GB per PA-ResSeg train step at width 64): 562,000 minor page faults and
0.9 s of system time per step on a 2-core machine. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35+) malloc asks for
transparent huge pages instead: 1,400 faults, 0.15 s, a 1.09-1.16x faster
step (BENCHMARKS.md). glibc reads the setting only when a process starts,
hence the restart. ``PARESSEG_HUGE_PAGES=0`` turns it off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "PARESSEG_HUGE_PAGES"


def wanted(environ=os.environ) -> bool:
    """True on Linux with glibc >= 2.35 when the setting is not there yet and not turned off."""
    if sys.platform != "linux" or environ.get(OPT_OUT, "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    libc, version = platform.libc_ver()
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    return libc == "glibc" and numbers >= (2, 35)


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with the setting added (no-op when not `wanted`)."""
    if not wanted():
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
