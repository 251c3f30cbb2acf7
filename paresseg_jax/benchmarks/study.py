"""One study end to end, as a user runs it: ``paresseg-predict`` on a two-phase phantom study.

The console script runs in its own process on a phantom study (default
512 x 512 x 60, PV and ART, with its liver mask) and a saved model: reading,
ART-to-PV registration, windowing, compiling (with an empty persistent
compilation cache, as for a first study, then again with the cache that run
filled, as for a later one), segmenting and writing the mask. Its wall time
and its peak resident memory (from ``wait4``, the kernel's account of that
process) are reported for the cascade's ROI crop and for whole slices, with
the stages' seconds read back from the report it prints, beside the study's
FLOP bound (``study_bound``). The variants 'liver' and 'liver-full' give no
liver mask but a liver model (``liver_standin``), so the liver stage runs, with
its default settings or on every whole slice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

from paresseg_jax import model_io
from paresseg_jax.benchmarks import study_bound
from paresseg_jax.data import phantom
from paresseg_jax.data.case import write_case

# paresseg-predict flags per variant: the liver mask's ROI cropped to its box, or whole slices (the default); no
# liver mask but a liver model (liver_standin), with the liver stage's default settings or on every whole slice.
VARIANTS = {"roi": ["--liver={liver}", "--crop_to_roi"], "whole": ["--liver={liver}"],
            "liver": ["--liver_model={liver_model}"],
            "liver-full": ["--liver_model={liver_model}", "--liver_slice_step=1", "--liver_scale=1"]}
DEFAULT_VARIANTS = ("roi", "whole")
# The liver stand-in: the liver-ResSeg of the tumor model's width (configs/liver_resseg.py), untrained.
LIVER_MODEL = {"name": "paresseg_jax.benchmarks.liver_standin:PhantomLiver", "phases": ("pv",), "fusion": None}
# Each variant runs twice on one persistent compilation cache: empty (a first study compiles every program)
# and as that run left it (a later study loads them).
CACHES = ("cold", "warm")


def predict_command() -> str:
    """The ``paresseg-predict`` console script of this environment."""
    beside = Path(sys.executable).parent / "paresseg-predict"
    found = str(beside) if beside.is_file() else shutil.which("paresseg-predict")
    if found is None:
        raise FileNotFoundError("paresseg-predict is not installed; run pip install -e . first")
    return found


def write_study(folder: Path, size: int, slices: int, seed: int = 0) -> dict[str, Path]:
    """A phantom HCC study (PV, ART, liver mask) in our layout; returns the file of each."""
    case = phantom.make_case(seed, "HCC", (slices, size, size))
    write_case(case, folder)
    return {name: folder / f"{name}.nii.gz" for name in ("pv", "art", "liver")}


# A process forked from this one starts with this one's memory high-water mark (at exec the kernel keeps the
# larger of the old and the new address space's), so the command runs under a small intermediary Python
# process, fresh from exec, that reports the command's own wall time and peak.
# The command's own output goes to the file named first.
_MEASURE = """
import os, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "wb") as out:
    child = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], env: Mapping[str, str], stdout: Path) -> tuple[float, int]:
    """``(wall seconds, peak resident bytes)`` of one command in its own process, its output into ``stdout``."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(stdout), *command], env=dict(env), capture_output=True,
                          text=True)
    seconds, peak_kb, status = done.stdout.split()[-3:] if done.returncode == 0 else ("0", "0", "-1")
    if int(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({status}): {done.stderr[-2000:]}")
    return float(seconds), int(peak_kb) * 1024  # Linux reports kilobytes


def printed_report(path: Path) -> dict:
    """The JSON report ``paresseg-predict`` prints for one study (after anything else printed before it)."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index("{"):])


def liver_model(folder: Path, spec: Mapping) -> Path:
    """The liver stand-in (``LIVER_MODEL``) at ``spec``'s width, untrained, saved into ``folder``."""
    import jax

    from paresseg_jax import models
    from paresseg_jax.benchmarks.train import module_factory

    liver_spec = {**LIVER_MODEL, "width": spec.get("width", 64)}
    module = module_factory(liver_spec)("float32")
    return model_io.save_model(folder, liver_spec, models.init_variables(module, jax.random.key(0)))


def benchmark_study(spec: Mapping, variables: Mapping, size: int = 512, slices: int = 60,
                    variants: tuple[str, ...] = DEFAULT_VARIANTS) -> list[dict]:
    """A row per variant and compilation cache (``CACHES``): ``volume_s`` (wall seconds for the study),
    ``peak_gb`` (peak resident memory), and the study's breakdown by stage and its FLOP bound at this machine's
    convolution rate (``study_bound``)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown study variants {unknown}; choose among {sorted(VARIANTS)}")
    command = predict_command()
    rates, rows, records = [study_bound.dense_conv_rate()], [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_study(Path(tmp) / "study", size, slices)
        model = model_io.save_model(Path(tmp) / "model", spec, variables)
        wanted = any("{liver_model}" in flag for v in variants for flag in VARIANTS[v])
        liver = liver_model(Path(tmp) / "liver_model", spec) if wanted else None
        for variant in variants:
            env = {**os.environ, "PARESSEG_XLA_CACHE": str(Path(tmp) / f"xla_{variant}")}  # empty, then filled
            given = [flag.format(liver=paths["liver"], liver_model=liver) for flag in VARIANTS[variant]]
            for cache in CACHES:
                printed = Path(tmp) / f"{variant}_{cache}.json"
                seconds, peak = run_measured(
                    [command, f"--pv={paths['pv']}", f"--art={paths['art']}", f"--model={model}",
                     f"--out={Path(tmp) / f'{variant}.nii.gz'}", *given], env, printed)
                rows.append({"part": "study", "variant": "jax", "mode": variant, "cache": cache, "size": size,
                             "slices": slices, "volume_s": seconds, "peak_gb": peak / 1e9})
                records.append(printed_report(printed)["stage_times"])
                rates.append(study_bound.dense_conv_rate())
    # the fastest rate measured before and after each study: a passing load must not raise the bound
    return [study_bound.with_bound(row, record, max(rates)) for row, record in zip(rows, records)]
