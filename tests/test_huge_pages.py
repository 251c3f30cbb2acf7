"""paresseg_jax.huge_pages: the launchers restart once with glibc's huge-page malloc setting."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from paresseg_jax import huge_pages

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ("import os, sys; from paresseg_jax import huge_pages; huge_pages.restart_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, "--flag=1", "x"], cwd=REPO, env={**env, **env_extra},
                            capture_output=True, encoding="utf-8", errors="replace", timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


@pytest.mark.skipif(not huge_pages.wanted({}),
                    reason="needs Linux with glibc >= 2.35 (the setting does not exist elsewhere)")
def test_restarts_once_with_the_setting_added_and_arguments_kept():
    assert _run({}) == ["glibc.malloc.hugetlb=1 ['--flag=1', 'x']"]  # one line: the first process was replaced
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == [
        "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--flag=1', 'x']"]


def test_opt_out_and_present_setting_and_other_platforms_leave_the_process_alone(monkeypatch):
    assert _run({huge_pages.OPT_OUT: "0"}) == ["['--flag=1', 'x']"]
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == ["glibc.malloc.hugetlb=0 ['--flag=1', 'x']"]
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert not huge_pages.wanted({})
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert not huge_pages.wanted({})


BUILD_STEPS = ("import optax; from paresseg_jax import losses, models; from paresseg_jax.train.step import make_train_step; "
               "module = models.create('resseg', width=4); "
               "[make_train_step(module, optax.adam(1e-3), losses.get_loss('ce'), lambda _: 1e-3) for _ in range(2)]")


@pytest.mark.skipif(not huge_pages.wanted({}),
                    reason="needs Linux with glibc >= 2.35 (the setting does not exist elsewhere)")
def test_a_cpu_train_step_built_without_the_setting_warns_once_saying_how_to_set_it():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    for extra, warnings in (({}, 1), ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, 0), ({huge_pages.OPT_OUT: "0"}, 0)):
        result = subprocess.run([sys.executable, "-c", BUILD_STEPS], cwd=REPO, env={**env, **extra},
                                capture_output=True, encoding="utf-8", errors="replace", timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("without glibc's huge-page malloc") == warnings, (extra, result.stderr)
        if warnings:
            assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in result.stderr
