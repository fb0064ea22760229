"""Numbers as reports show them: a missing or non-finite value (None, NaN, inf) reads "n/a"."""

from __future__ import annotations

import math
import numbers
from typing import Any

MISSING = "n/a"


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (booleans are no numbers here)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def number(value: Any, spec: str = ".3f") -> str:
    """``value`` in ``spec`` (whole numbers as they are); "n/a" for None, NaN and infinities;
    anything else (a name, a flag) as ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if not finite(value):
        return MISSING
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return format(float(value), spec)
