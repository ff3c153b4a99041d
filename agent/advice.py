"""Contract advice: the largest hourly flow and power over the last 12 months, compared
with the contract (terms: the utility re-checks the contracted flow, sopimusvesivirta,
from the largest hourly flow). Pure: interval record bodies in, a summary out.

Records shorter than an hour are summed into clock hours; an hour counts only when all
its periods are there (a partial hour would understate the flow). Records flagged
``no_data`` carry interpolated energy and volume: they still count (the meter's registers
moved by that much), but the result says how many such hours there were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.protocol import HEAT_METER
from agent.timefmt import to_unix

YEAR_S = 365 * 86400


def hourly(records: Iterable[Mapping[str, Any]]) -> dict[float, tuple[float, float, bool]]:
    """Complete clock hours of one heat meter: hour start -> (m3, kWh, any no_data)."""
    acc: dict[float, list[Any]] = {}
    for r in records:
        if r.get("role") != HEAT_METER or r.get("volume_m3") is None:
            continue
        p = int(r.get("period_s") or 3600)
        start = to_unix(str(r["start"]))
        h = math.floor(start / 3600) * 3600.0
        a = acc.setdefault(h, [0.0, 0.0, 0, False, p])
        a[0] += float(r["volume_m3"])
        a[1] += float(r.get("energy_kwh") or 0.0)
        a[2] += p
        a[3] = a[3] or "no_data" in r.get("flags", ())
    return {h: (a[0], a[1], a[3]) for h, a in acc.items() if a[2] >= 3600}


def contract_review(
    records: Iterable[Mapping[str, Any]],
    now: float,
    flow_limit_m3h: float | None,
    power_limit_kw: float | None,
) -> dict[str, Any]:
    """The largest hourly flow and power over the 12 months before ``now``."""
    hours = {h: v for h, v in hourly(records).items() if now - YEAR_S <= h < now}
    out: dict[str, Any] = {
        "kind": "contract_review",
        "window_days": 365,
        "hours": len(hours),
        "hours_interpolated": sum(1 for v in hours.values() if v[2]),
        "max_flow_m3h": None,
        "max_flow_hour": None,
        "max_power_kw": None,
        "max_power_hour": None,
        "flow_limit_m3h": flow_limit_m3h,
        "power_limit_kw": power_limit_kw,
        "flow_ratio": None,
        "power_ratio": None,
    }
    if not hours:
        return out
    hf = max(hours, key=lambda h: hours[h][0])
    hp = max(hours, key=lambda h: hours[h][1])
    out["max_flow_m3h"] = round(hours[hf][0], 6)
    out["max_flow_hour"] = datetime.fromtimestamp(hf, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out["max_power_kw"] = round(hours[hp][1], 3)
    out["max_power_hour"] = datetime.fromtimestamp(hp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if flow_limit_m3h:
        out["flow_ratio"] = round(out["max_flow_m3h"] / flow_limit_m3h, 3)
    if power_limit_kw:
        out["power_ratio"] = round(out["max_power_kw"] / power_limit_kw, 3)
    return out


def record_end(rec: Mapping[str, Any]) -> float:
    return to_unix(str(rec["end"]))


def month_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def describe(review: Mapping[str, Any]) -> str:
    """One line for `dh-agent status`."""
    if not review.get("hours"):
        return "contract review: no complete hour recorded yet"
    parts = [f"largest hourly flow {review['max_flow_m3h']:.3f} m3/h ({review['max_flow_hour']})"]
    if review.get("flow_limit_m3h"):
        parts[-1] += (
            f", {100 * review['flow_ratio']:.0f} % of the contracted "
            f"{review['flow_limit_m3h']} m3/h"
        )
    parts.append(
        f"largest hourly power {review['max_power_kw']:.1f} kW ({review['max_power_hour']})"
    )
    if review.get("power_limit_kw"):
        parts[-1] += (
            f", {100 * review['power_ratio']:.0f} % of the contracted {review['power_limit_kw']} kW"
        )
    return f"contract review over {review['hours']} h of the last 12 months: " + "; ".join(parts)
