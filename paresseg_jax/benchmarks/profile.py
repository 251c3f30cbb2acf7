"""Where a compiled step spends its time: XLA op times from a ``jax.profiler`` trace.

`op_times` runs a blocking callable under ``jax.profiler.trace`` and reads the
trace back with ``jax.profiler.ProfileData``. Every event that names an XLA op
counts with its self time, i.e. minus the ops nested in it on the same line
(a while loop's body, say). On a GPU these are the events of the device's
"XLA Ops" line (kernel times; written from the trace format, not yet run on
a GPU here). On a CPU they are the host events with an ``hlo_op`` stat, the
thunk times of XLA's worker threads, which can overlap: shares are then of
the summed op time, not of the wall time.

`op_sources` maps op names to the JAX operation each came from (the op_name
metadata of the compiled HLO), so a row reads "backward conv_general_dilated"
rather than "ynn_fusion.12". On a CPU an asynchronous thunk (a dot on XLA's
thread pool) may be recorded shorter than it runs: compare variants with the
bench's timings, and use the profile to see which operations grow.
"""

from __future__ import annotations

import collections
import re
import tempfile
from pathlib import Path
from typing import Callable

import jax

_INSTRUCTION = re.compile(r'\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name="([^"]*)"')


def op_sources(compiled) -> dict[str, str]:
    """``{hlo op name: jax op_name path}`` from a compiled jax function's HLO text."""
    sources = {}
    for line in compiled.as_text().splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            sources.setdefault(match.group(1), match.group(2))
    return sources


def describe(name: str, source: str | None) -> str:
    """A short label for an op: pass (forward/backward, in a loop or not) and primitive of its op_name
    path; ops XLA added itself (copies, broadcasts of constants) are labelled by their kind."""
    if not source:
        return f"(XLA) {re.sub(r'[.][0-9]+$', '', name)}"
    primitive = source.rstrip("/").rsplit("/", 1)[-1]
    stage = "backward" if "transpose(" in source else "forward"
    return f"{stage}{' loop' if '/while/' in source else ''} {primitive}"


def _self_times(events) -> dict[str, int]:
    """Per op name, nanoseconds not covered by ops nested in it (events of one timeline line)."""
    out: dict[str, int] = collections.Counter()
    enclosing: list[tuple[str, int]] = []  # (name, end_ns) of the ops the next event may be nested in
    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
        while enclosing and enclosing[-1][1] <= start:
            enclosing.pop()
        out[name] += duration
        if enclosing:
            out[enclosing[-1][0]] -= duration
        enclosing.append((name, start + duration))
    return dict(out)


def _trace_events(path: Path):
    """Yields (line key, op name, start_ns, duration_ns) for every XLA op event of a trace file.

    With an accelerator, the device planes' "XLA Ops" lines (kernel times; host-side launch
    events are left out); on a CPU, the host events that carry an ``hlo_op`` stat."""
    profile = jax.profiler.ProfileData.from_file(str(path))
    device_lines = [(plane, line) for plane in profile.planes for line in plane.lines if line.name == "XLA Ops"]
    pairs = device_lines or [(plane, line) for plane in profile.planes for line in plane.lines]
    for plane, line in pairs:
        for event in line.events:
            stats = dict(event.stats)
            if device_lines or "hlo_op" in stats:
                yield (plane.name, line.name), str(stats.get("hlo_op", event.name)), event.start_ns, event.duration_ns


def op_times(fn: Callable[[], object], calls: int = 3, logdir: str | None = None) -> dict[str, float]:
    """Seconds of self time per XLA op and call of the blocking `fn` (traced `calls` times after one untimed call)."""
    if calls < 1:
        raise ValueError(f"calls={calls} must be >= 1")
    fn()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(logdir or tmp)
        with jax.profiler.trace(str(folder)):
            for _ in range(calls):
                fn()
        traces = sorted(folder.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no trace under {folder}")
        lines: dict[tuple, list] = collections.defaultdict(list)
        for key, name, start, duration in _trace_events(traces[-1]):
            lines[key].append((name, start, duration))
    totals: dict[str, float] = collections.Counter()
    for events in lines.values():
        for name, ns in _self_times(events).items():
            totals[name] += ns / 1e9 / calls
    return dict(totals)


def summarize(times: dict[str, float], sources: dict[str, str], top: int = 15) -> list[dict]:
    """Rows ``{'what', 'ms', 'share', 'ops'}`` per label, largest first; `top` rows plus one for the rest."""
    by_label: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for name, seconds in times.items():
        entry = by_label[describe(name, sources.get(name))]
        entry[0] += seconds
        entry[1] += 1
    total = sum(times.values()) or 1.0
    ranked = sorted(by_label.items(), key=lambda kv: -kv[1][0])
    rows = [{"what": label, "ms": 1e3 * s, "share": s / total, "ops": n} for label, (s, n) in ranked[:top]]
    rest = ranked[top:]
    if rest:
        seconds = sum(s for _, (s, _) in rest)
        rows.append({"what": f"({len(rest)} other kinds)", "ms": 1e3 * seconds, "share": seconds / total,
                     "ops": sum(n for _, (_, n) in rest)})
    return rows
