"""A counter's series across readings (``agent.aggregator``): each reading's register
with an unwrapped cumulative value (rollovers added, resets and meter swaps counted as
zero), and the register interpolated at a period boundary. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading on the record clock: ``ts`` (Unix s, synchronised), good values only."""

    ts: float
    values: Mapping[str, float]
    flags: frozenset[str] = frozenset()
    meter_id: str | None = None  # the meter's identity, when the device reports one


def step(prev: float, cur: float, rollover: float | None) -> tuple[float, str | None]:
    """Counter increment from ``prev`` to ``cur``: (delta >= 0, None | 'rollover' | 'reset')."""
    d = cur - prev
    if d >= 0:
        if rollover and d > rollover / 2:  # an absurd jump up: a discontinuity, not energy
            return 0.0, "reset"
        return d, None
    if rollover and d + rollover < rollover / 2:
        return d + rollover, "rollover"
    return 0.0, "reset"


@dataclass
class Point:
    """A counter observation: time, register, unwrapped cumulative value, flags of the step."""

    ts: float
    reg: float
    u: float
    event: str | None = None
    mid: str | None = None  # the meter's identity (None: not reported)


def chain(
    name: str,
    start: tuple[float, float] | None,
    samples: Sequence[Sample],
    rollover: float | None,
    start_mid: str | None = None,
) -> list[Point]:
    """Counter observations with an unwrapped cumulative value (u of ``start`` = 0).
    A step between two different meter ids is a ``swap``: it counts as zero."""
    pts: list[Point] = []
    if start is not None:
        pts.append(Point(start[0], start[1], 0.0, None, start_mid))
    for s in samples:
        v = s.values.get(name)
        if v is None or not math.isfinite(v):
            continue
        if not pts:
            pts.append(Point(s.ts, v, 0.0, None, s.meter_id))
            continue
        p = pts[-1]
        mid = s.meter_id if s.meter_id is not None else p.mid
        if p.mid is not None and mid != p.mid:
            pts.append(Point(s.ts, v, p.u, "swap", mid))
            continue
        d, ev = step(p.reg, v, rollover)
        pts.append(Point(s.ts, v, p.u + d, ev, mid))
    return pts


def value_at(pts: Sequence[Point], t: float) -> tuple[float, float, float] | None:
    """(register, u, bracket width) at time t, interpolated; None if t is not bracketed."""
    for i, p in enumerate(pts):
        if p.ts == t:
            return p.reg, p.u, 0.0
        if p.ts > t:
            if i == 0:
                return None
            a = pts[i - 1]
            f = (t - a.ts) / (p.ts - a.ts)
            du = p.u - a.u
            # the register moves with u between a and p (a reset or swap step has du = 0:
            # the old register holds until the new meter's first reading)
            reg = a.reg + f * du
            if p.event == "rollover":
                wrap = a.reg + du - p.reg  # the rollover value, recovered from the step
                if reg >= wrap:
                    reg -= wrap
            return reg, a.u + f * du, p.ts - a.ts
    return None


def bracket_width(pts: Sequence[Point], t: float) -> float:
    """The time between the readings around t (0 on a reading, inf when not bracketed)."""
    for i, q in enumerate(pts):
        if q.ts == t:
            return 0.0
        if q.ts > t:
            return q.ts - pts[i - 1].ts if i else math.inf
    return math.inf


def reset_in(pts: Sequence[Point], b: float, e: float) -> bool:
    """A counter reset in a step that overlaps (b, e]."""
    return any(
        q.event == "reset" and q.ts > b and pts[k - 1].ts < e for k, q in enumerate(pts) if k > 0
    )
