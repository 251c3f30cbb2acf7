"""Where a study's time goes: seconds per named stage, and the FLOPs its forward passes computed.

``recording()`` opens a record for one study; code at any depth (reading,
registration, the model's compilation) adds to the open record with
``stage(name)`` without it being passed down, and does nothing when no record
is open (training, scoring). A stage opened inside another is counted apart
and taken out of the outer one: compilation happens inside the liver and
tumor stages, yet each second is counted once, so the stages sum to at most
the study's wall time. Timers only observe; they change no result.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator, Mapping

# Every stage a study's record names, in the order a study passes them.
STAGES = {
    "reading": "images and masks read from disk (any on another grid resampled onto PV's as they are read)",
    "registration": "the other phases' transforms to PV fitted (metric optimisation on binned copies)",
    "resampling": "the other phases resampled through their transforms onto the PV grid",
    "windowing": "HU windowed to [0, 1], absent phases filled",
    "liver": "the liver model's forward passes and its mask (compilation apart)",
    "tumor": "the ROI, the tumor model's forward passes, its mask and the label map (compilation apart)",
    "compilation": "tracing, lowering and compiling each forward pass (inside the liver and tumor stages), or the "
                   "wait for those compiled beside registration (their own seconds under 'beside')",
    "postprocessing": "the postprocessing stored beside the model",
    "measuring": "volumes, lesions and metrics of the result",
    "writing": "the outputs written to disk",
}
_OPEN = contextvars.ContextVar("paresseg_stage_times", default=None)


class StageTimes:
    """One study's seconds per stage (exclusive of stages opened inside), and forward-pass FLOPs."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.flops = 0.0
        self.forward_calls = 0
        self.beside: dict[str, float] = {}  # seconds of stages run in a thread beside the others (``beside``)
        self._open: list[list[float]] = []  # per open stage: [start, seconds of the stages inside it]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {list(STAGES)}")
        frame = [time.perf_counter(), 0.0]
        self._open.append(frame)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = time.perf_counter() - frame[0]
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - frame[1]
            if self._open:
                self._open[-1][1] += elapsed

    def record(self) -> dict:
        """The study's record: every stage's seconds (0 for those that did not run, listed in ``not_run``),
        the wall time since recording began, and the forward passes' FLOPs (XLA's count) and calls."""
        return {"seconds": {name: self.seconds.get(name, 0.0) for name in STAGES},
                "not_run": [name for name in STAGES if name not in self.seconds],
                "total_s": time.perf_counter() - self.start,
                "forward_flops": self.flops, "forward_calls": self.forward_calls, "beside": dict(self.beside)}


@contextlib.contextmanager
def recording() -> Iterator[StageTimes]:
    """A fresh record, open for the block (the stages below add to it)."""
    times = StageTimes()
    token = _OPEN.set(times)
    try:
        yield times
    finally:
        _OPEN.reset(token)


def stage(name: str):
    """A context timing ``name`` into the open record; a no-op without one."""
    times = _OPEN.get()
    return contextlib.nullcontext() if times is None else times.stage(name)


def is_recording() -> bool:
    """Whether a record is open (counting FLOPs costs a cost analysis per compiled forward)."""
    return _OPEN.get() is not None


def add_forward(flops_per_call: float, calls: int = 1) -> None:
    """``calls`` forward passes of ``flops_per_call`` FLOPs each, added to the open record (if any)."""
    times = _OPEN.get()
    if times is not None:
        times.flops += float(flops_per_call) * calls
        times.forward_calls += calls


@contextlib.contextmanager
def beside(waiting: str, function: Callable, *args, **kwargs) -> Iterator[Callable[[], Any]]:
    """``function(*args, **kwargs)`` started in a thread while the caller goes on (a compilation beside the
    single-threaded registration, on an idle core); yields ``wait()``, which returns its result, and may be
    called after the block. An error leaving the block first lets the thread end (its own error ignored), so
    nothing it prints follows the caller's error. The thread's stages are recorded apart, under the open
    record's ``beside`` (they overlap the others, so the stages still sum to at most the wall time), its
    forward passes with the others, and the caller's wait under ``waiting``."""
    outer = _OPEN.get()

    def run():
        if outer is None:
            return function(*args, **kwargs), None
        with recording() as times:
            return function(*args, **kwargs), times

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"beside_{waiting}")
    future = pool.submit(run)
    pool.shutdown(wait=False)

    def wait():
        with stage(waiting):
            value, times = future.result()
        if times is not None:
            outer.flops += times.flops
            outer.forward_calls += times.forward_calls
            for name, seconds in times.seconds.items():
                outer.beside[name] = outer.beside.get(name, 0.0) + seconds
        return value

    try:
        yield wait
    except BaseException:
        concurrent.futures.wait([future])
        raise


def line(record: Mapping) -> str:
    """The stages that ran, one short line: ``reading 0.1 s, registration 2.0 s, ...``."""
    ran = [(name, s) for name, s in record["seconds"].items() if name not in record.get("not_run", ())]
    return ", ".join(f"{name} {s:.1f} s" for name, s in ran)
