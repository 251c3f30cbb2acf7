"""Numpy values in JSON files: scalars and arrays written as the plain numbers and lists they hold.

Case metadata and evaluation records carry numpy scalars (a spacing read from
a header, a count from ``np.count_nonzero``); ``json.dumps(..., default=numpy_value)``
writes them without each writer converting by hand.
"""

from __future__ import annotations

import numpy as np


def numpy_value(value):
    """``json.dumps`` ``default``: a numpy scalar as its Python number, an array as a nested list."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
