"""``cmd limit_override``: a timed lower limit (demand response). Pure.

Body: ``{"cmd": "limit_override", "id": ..., "flow_limit_m3h": x | "power_limit_kw": y,
"until": RFC 3339}``. Exactly one limit, a positive number; ``until`` in the future and
at most 24 h ahead. It may only lower a limit: against the contract's own limit of the
same kind (a contract without that limit has none to raise). A new override replaces
the one in force. Rejections use the contract's reason style (``invalid: KEY: ...``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agent.limiter_state import LimiterState, Override
from agent.timefmt import parse_time

MAX_AHEAD_S = 24 * 3600.0
KEYS = ("flow_limit_m3h", "power_limit_kw")


def _time(v: Any) -> float | None:
    if not isinstance(v, str) or len(v) > 64:
        return None
    return parse_time(v, naive=False)


def parse(body: dict[str, Any], now: float) -> tuple[Override | None, str]:
    """The override a command body asks for, or (None, reason)."""
    extra = set(body) - {"cmd", "id", "until", *KEYS}
    if extra:
        return None, f"invalid: {sorted(extra)[0]}: unknown key"
    given = [k for k in KEYS if k in body]
    if len(given) != 1:
        return None, "invalid: limit_override: exactly one of flow_limit_m3h, power_limit_kw"
    key = given[0]
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        return None, f"invalid: {key}: must be a positive number"
    if v > 100_000:
        return None, f"invalid: {key}: must be at most 100000"
    until = _time(body.get("until"))
    if until is None:
        return None, "invalid: until: must be an RFC 3339 time with a zone"
    if until <= now:
        return None, "invalid: until: must be in the future"
    if until > now + MAX_AHEAD_S:
        return None, "invalid: until: at most 24 h ahead"
    o = Override(until=until, id=str(body.get("id", "")), since=now)
    if key == "flow_limit_m3h":
        return replace(o, flow_limit_m3h=float(v)), ""
    return replace(o, power_limit_kw=float(v)), ""


def admit(o: Override, flow_limit_m3h: float | None, power_limit_kw: float | None) -> str:
    """'' if the override lowers the contract's limit, else the rejection reason."""
    fo, po = o.flow_limit_m3h, o.power_limit_kw
    if fo is not None and flow_limit_m3h is not None and fo >= flow_limit_m3h:
        return f"invalid: flow_limit_m3h: must be below the contract's {flow_limit_m3h:g}"
    if po is not None and power_limit_kw is not None and po >= power_limit_kw:
        return f"invalid: power_limit_kw: must be below the contract's {power_limit_kw:g}"
    return ""


def start(s: LimiterState, o: Override) -> LimiterState:
    return replace(s, override=o)


def view(o: Override | None, now: float) -> dict[str, Any] | None:
    """For ``status`` and ``config/current``: the override in force, or None."""
    if o is None or now >= o.until:
        return None
    out: dict[str, Any] = {
        "id": o.id,
        "since": datetime.fromtimestamp(o.since, UTC).isoformat().replace("+00:00", "Z"),
        "until": datetime.fromtimestamp(o.until, UTC).isoformat().replace("+00:00", "Z"),
    }
    for k in KEYS:
        if getattr(o, k) is not None:
            out[k] = getattr(o, k)
    return out
