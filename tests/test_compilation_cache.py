"""paresseg_jax.compilation_cache: where the launchers' persistent XLA cache lives, and that a rerun hits it."""

import os
import subprocess
import sys
from pathlib import Path

from paresseg_jax import compilation_cache

REPO = Path(__file__).resolve().parents[1]
# One process: enable the cache (storing every compilation), compile, report whether it was a cache hit.
SCRIPT = """
import jax, jax.numpy as jnp
from paresseg_jax import compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **_: hits.append(name) if name.endswith("cache_hits") else None)
print(compilation_cache.enable(min_compile_secs=0))
jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum()).lower(jnp.ones((7, 5))).compile()
print("hit" if hits else "miss")
"""


def test_cache_dir_choice():
    home = Path.home() / ".cache" / "paresseg_jax" / "xla"
    assert compilation_cache.cache_dir({}) == home
    assert compilation_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/a"}) == Path("/a")
    assert compilation_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/a", compilation_cache.ENV: "~/b"}) == \
        Path.home() / "b"
    assert compilation_cache.cache_dir({compilation_cache.ENV: "0", "JAX_COMPILATION_CACHE_DIR": "/a"}) is None


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in (compilation_cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**env, **env_extra}, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_second_process_loads_the_compiled_function(tmp_path):
    cache = tmp_path / "xla"
    assert _run({compilation_cache.ENV: str(cache)}) == [str(cache), "miss"]
    assert any(cache.iterdir())  # the executable was stored
    assert _run({compilation_cache.ENV: str(cache)}) == [str(cache), "hit"]
    assert _run({compilation_cache.ENV: "0"}) == ["None", "miss"]


def test_the_size_limit_has_its_lock_package_declared():
    """JAX refuses a cache size limit without `filelock` (then it caches nothing); torch, which the tests
    install, brings filelock too, so only the declared requirement protects a plain `pip install`."""
    from importlib.metadata import requires

    assert any(r.split(">")[0].split("=")[0].strip().lower() == "filelock" for r in requires("paresseg_jax"))
