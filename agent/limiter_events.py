"""The limiter's events (pure): their common shape and the per-period exceedance."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.limiter_state import LimiterParams, LimiterState, Track


@dataclass(frozen=True)
class Closed:
    """A period the accounting has just closed."""

    start: float
    used: float
    full: bool


def ev(
    p: LimiterParams,
    kind: str,
    t: float,
    value: float | None,
    threshold: float | None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "t": t, "source": "limiter"}
    if p.device is not None:
        out["device"] = p.device
    out["value"] = None if value is None else round(value, 4)
    out["threshold"] = threshold
    out.update(extra)
    return out


def dur(s: LimiterState, t: float) -> float | None:
    return None if s.since is None else round(t - s.since, 3)


def exceeded(
    p: LimiterParams,
    name: str,
    lim: float,
    resolution: float,
    tr: Track,
    closed: list[Closed],
    t: float,
    rate: float,
) -> tuple[Track, list[dict[str, Any]]]:
    """``<name>_limit_exceeded`` once per fully observed period. A period whose register
    difference exceeds the allowance by no more than the meter's own resolution (one
    register step) is not an exceedance: the register cannot tell it apart."""
    ps = float(p.period_s)
    allowance = lim * ps / 3600.0 * (1.0 + p.exceed_tolerance) + resolution
    kind = f"{name}_limit_exceeded"
    events: list[dict[str, Any]] = []
    for c in closed:
        if c.full and c.used > allowance + 1e-9 and tr.reported != c.start:
            events.append(
                ev(
                    p,
                    kind,
                    c.start,
                    c.used * 3600.0 / ps,
                    lim,
                    basis="actual",
                    period_start=c.start,
                    period_s=p.period_s,
                    used=round(c.used, 6),
                    allowed=round(lim * ps / 3600.0, 6),
                    resolution=resolution,
                    enforce=p.enforce,
                )
            )
    if (
        tr.period is not None
        and tr.full
        and tr.used > allowance + 1e-9
        and tr.reported != tr.period
    ):
        left = tr.period + ps - t
        projected = (tr.used + rate * left / 3600.0) * 3600.0 / ps
        events.append(
            ev(
                p,
                kind,
                tr.period,
                projected,
                lim,
                basis="running",
                period_start=tr.period,
                period_s=p.period_s,
                used=round(tr.used, 6),
                allowed=round(lim * ps / 3600.0, 6),
                resolution=resolution,
                detected=t,
                enforce=p.enforce,
            )
        )
        tr = replace(tr, reported=tr.period)
    return tr, events
