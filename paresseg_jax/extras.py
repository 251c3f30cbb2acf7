"""Optional dependencies (the ``torch`` and ``dicom`` extras): imported when needed, their absence a one-line error.

A missing extra is something the user fixes with one command, so it is a
``PareSegError`` that says that command, not a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib

from paresseg_jax.errors import PareSegError


def require(module: str, purpose: str, extra: str):
    """Import ``module`` or fail naming ``purpose`` and the command that installs ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PareSegError(f"{purpose} needs the {module.split('.')[0]} package, which is not installed",
                           fix=f"install the {extra} extra: pip install 'paresseg_jax[{extra}]'") from None
