"""Non-finite numbers (NaN, ±Infinity): JSON has none, so they become null or are refused.
Pure."""

from __future__ import annotations

import math
from typing import Any


def finite(v: float | None) -> float | None:
    """``v``, or None when it is missing or not finite."""
    return v if v is not None and math.isfinite(v) else None


def number(v: Any) -> float | None:
    """A JSON number (int or float, not a bool) as a float, else None."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def finite_or_null(obj: Any) -> Any:
    """A copy with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def all_finite(obj: Any) -> bool:
    """No non-finite float anywhere in ``obj`` (dicts and lists searched)."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(x) for x in obj.values())
    if isinstance(obj, list):
        return all(all_finite(x) for x in obj)
    return True
