"""One test environment for every test and every process the tests start.

Set at import, before any test module imports jax (jax reads its settings once):
- the CPU backend, whatever accelerator or flags the developer's shell has, so a
  reference and the subprocess compared with it run on the same backend;
- no flag that changes numerics or device counts leaks in from the shell
  (tests that need 8 devices or float64 set them in their own subprocess);
- one XLA compilation cache for the session, shared by the xdist workers and every
  launcher they start (workers and subprocesses inherit the environment), in a
  temporary folder: never the user's ``~/.cache/paresseg_jax/xla``;
- XLA's CPU backend compiles without LLVM optimisation (``TEST_XLA_FLAGS``, in
  every test process): the tests' tiny models spend most of their time compiling
  (PA-ResSeg's train step: 25 -> 17 s) and little running; the values are those of
  the same program (tests that need more devices add their flag to these);
- launchers do not restart themselves for huge pages (a second interpreter per
  command buys nothing at test sizes; ``test_huge_pages`` tests the restart).
Every test starts from fixed numpy and Python seeds.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import numpy as np
import pytest

LEAKING = ("XLA_FLAGS", "JAX_ENABLE_X64", "JAX_DISABLE_JIT", "JAX_DEBUG_NANS", "JAX_DEFAULT_MATMUL_PRECISION",
           "JAX_DEFAULT_DTYPE_BITS", "JAX_TRACEBACK_FILTERING", "TQDM_DISABLE", "GLIBC_TUNABLES")
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
CACHE_OWNER = "PARESSEG_TEST_CACHE_OWNER"  # set in the process that made the folder, so only it removes it


def _set_up_environment(environ=os.environ) -> None:
    for name in LEAKING:
        environ.pop(name, None)
    environ["JAX_PLATFORMS"] = "cpu"
    environ["XLA_FLAGS"] = TEST_XLA_FLAGS
    environ["PARESSEG_HUGE_PAGES"] = "0"
    if not environ.get(CACHE_OWNER):  # the first process (pytest itself); xdist workers inherit its folder
        folder = tempfile.mkdtemp(prefix="paresseg-test-xla-")
        environ[CACHE_OWNER] = str(os.getpid())
        environ["PARESSEG_XLA_CACHE"] = environ["JAX_COMPILATION_CACHE_DIR"] = folder


_set_up_environment()


def pytest_unconfigure(config):
    if os.environ.get(CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["PARESSEG_XLA_CACHE"], ignore_errors=True)


@pytest.fixture(autouse=True)
def fixed_seeds():
    random.seed(0)
    np.random.seed(0)
