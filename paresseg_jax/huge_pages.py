"""glibc's huge-page malloc for CPU training: the launchers restart with it, library users get a warning.

XLA's CPU runtime allocates a step's buffers afresh on every call (about
2.2 GB per PA-ResSeg train step at width 64): 562,000 minor page faults and
0.9 s of system time per step on a 2-core machine. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35+) malloc asks for
transparent huge pages instead: 1,400 faults, 0.15 s, a 1.09-1.16x faster
step (BENCHMARKS.md). glibc reads the setting only when a process starts,
hence the restart of the ``paresseg-*`` launchers; a script or notebook of
one's own must be started with the setting, and building a CPU train step
without it logs one warning saying so. ``PARESSEG_HUGE_PAGES=0`` turns both
off.
"""

from __future__ import annotations

import functools
import logging
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


@functools.cache  # once per process
def warn_if_missing_on_cpu() -> None:
    """Logs a warning when this process computes on CPU and would gain from the setting (`wanted`)."""
    import jax

    if jax.default_backend() == "cpu" and wanted():
        logging.getLogger(__name__).warning(
            "CPU training without glibc's huge-page malloc: XLA allocates every step's buffers afresh, and steps "
            "ran 1.1-1.4x faster with the setting. Start Python with GLIBC_TUNABLES=%s=1 (the paresseg-* commands "
            "do this themselves); %s=0 silences this warning.", TUNABLE, OPT_OUT)
