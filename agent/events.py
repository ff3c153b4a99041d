"""Event bodies: what goes on the `event` stream. Pure."""

from __future__ import annotations

from typing import Any

from agent.finite import finite_or_null
from agent.timefmt import rfc3339


def event_body(ev: dict[str, Any], now: float) -> dict[str, Any]:
    """Normalise an event from the monitors/limiter: `kind` first, `time` as RFC 3339
    (from `t`, Unix s, when given, else `now`), non-finite numbers as null."""
    body = {k: finite_or_null(v) for k, v in ev.items() if k != "t"}
    t = ev.get("t")
    body["time"] = rfc3339(float(t) if isinstance(t, int | float) else now)
    body.setdefault("kind", "unknown")
    return body
