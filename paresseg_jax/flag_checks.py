"""Ranges of the launchers' numeric flags, checked before anything is loaded.

``--threshold 0`` or ``--stride 0`` would otherwise fail, or quietly give a
wrong answer, after a model was loaded and a study read. Launchers call
:func:`in_range` on each value first; the error states the range.
"""

from __future__ import annotations

import math

from paresseg_jax.errors import BadInputError


def in_range(flag: str, value, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, meaning: str = "") -> None:
    """Refuse ``--flag=value`` outside ``[low, high]`` (``(low, high]`` with ``low_open``); None (not given) passes."""
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above or (isinstance(value, float) and math.isnan(value)):
        if high is None:
            wanted = f"{'more than' if low_open else 'at least'} {low}"
        else:
            wanted = f"in {'(' if low_open else '['}{low}, {high}]"
        why = f" ({meaning})" if meaning else ""
        raise BadInputError(f"--{flag}={value} is out of range: it must be {wanted}{why}",
                            fix=f"give --{flag} a value {wanted}")


def all_in_range(values: dict, ranges: dict) -> None:
    """:func:`in_range` for each flag named in ``ranges`` (``flag -> keyword arguments``), value from ``values``."""
    for flag, limits in ranges.items():
        in_range(flag, values.get(flag), **limits)
