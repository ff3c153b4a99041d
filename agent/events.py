"""Event bodies: what goes on the `event` stream. Pure."""

from __future__ import annotations

import math
from typing import Any

from agent.timefmt import rfc3339


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def event_body(ev: dict[str, Any], now: float) -> dict[str, Any]:
    """Normalise an event from the monitors/limiter: `kind` first, `time` as RFC 3339
    (from `t`, Unix s, when given, else `now`), non-finite numbers as null."""
    body = {k: _clean(v) for k, v in ev.items() if k != "t"}
    t = ev.get("t")
    body["time"] = rfc3339(float(t) if isinstance(t, int | float) else now)
    body.setdefault("kind", "unknown")
    return body
