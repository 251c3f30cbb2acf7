"""Ranges of the launchers' numeric flags, checked before anything is loaded.

``--threshold 0`` or ``--stride 0`` would otherwise fail, or quietly give a
wrong answer, after a model was loaded and a study read. Launchers call
:func:`in_range` on each value first; the error states the range.
"""

from __future__ import annotations

import math

from paresseg_jax.errors import BadInputError


# The inference settings (a config's ``eval`` section, paresseg-predict's flags of the same names).
_PROBABILITY = dict(low=0.0, high=1.0, low_open=True)
EVAL_RANGES = {"threshold": _PROBABILITY, "liver_threshold": _PROBABILITY, "tile": dict(low=16), "stride": dict(low=1),
               "batch_size": dict(low=1), "batch_pixels": dict(low=0, meaning="0: automatic"),
               "roi_margin": dict(low=0), "pad_multiple": dict(low=1),
               "liver_slice_step": dict(low=1, meaning="1: every slice"),
               "liver_scale": dict(low=1, meaning="1: full resolution")}


def in_range(flag: str, value, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, meaning: str = "", prefix: str = "--") -> None:
    """Refuse ``--flag=value`` outside ``[low, high]`` (``(low, high]`` with ``low_open``); None (not given) passes.
    ``prefix`` names where the value comes from (``config.eval.`` for a config file's)."""
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
        raise BadInputError(f"{prefix}{flag}={value} is out of range: it must be {wanted}{why}",
                            fix=f"give {prefix}{flag} a value {wanted}")


def all_in_range(values, ranges: dict, prefix: str = "--") -> None:
    """:func:`in_range` for each flag named in ``ranges`` (``flag -> keyword arguments``), value from ``values``."""
    for flag, limits in ranges.items():
        in_range(flag, values.get(flag), **limits, prefix=prefix)


def numbers(flag: str, values, kind=int, **limits) -> list | None:
    """A list flag (``--seeds=0,1,2``) parsed as ``kind`` and each value checked by :func:`in_range`; None passes."""
    if values is None:
        return None
    try:
        parsed = [kind(value) for value in values]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise BadInputError(f"--{flag}={','.join(values)} is not a list of {what}",
                            fix=f"give --{flag} {what} separated by commas") from None
    for value in parsed:
        in_range(flag, value, **limits)
    return parsed
