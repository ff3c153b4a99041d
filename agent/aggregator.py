"""Interval records from readings (contract section 5). Pure: plain data in, plain data out.

``close_periods(state, samples, params)`` closes every period whose end boundary is
bracketed by the samples (a sample at or after it exists) and returns the records, in
order, plus the new state. The state is all that must survive a restart: the last closed
boundary, the register values reported there, and the last sample at or before it (to
bracket the next boundary). Records never overlap and never repeat: samples at or before
the state's boundary are ignored, whatever order they arrive in.

Counters (``energy_kwh``, ``volume_m3``) are the meter's registers, never integrated from
power or flow:

* a boundary's register value comes from the reading on it, or is interpolated linearly
  between the readings around it;
* a decrease is a rollover when the counter has a rollover value and the wrapped step is
  small (less than half the range); otherwise it is a ``counter_reset``: that step counts
  as zero, so nothing is negative or invented, and the record is flagged;
* consecutive records link exactly: a record's ``*_start`` is the previous record's
  ``*_end`` (the same stored number), so a run's sum equals the register difference
  across it (plus rollovers, minus nothing: resets contribute only what was measured);
* meter replacement: samples may carry the meter's identity (``meter_id``); when it
  changes between two readings, the old meter's series ends at its last reading (the
  register holds there) and the new one starts at the new meter's first reading. The
  step between them counts as zero (nothing invented, never a ``counter_reset``); the
  record of the period holding the swap is flagged ``meter_replaced`` and its energy is
  what the two meters measured in it (old: period start to its last reading, new: its
  first reading to period end), so its ``*_end`` - ``*_start`` differs from it: the
  series are conserved each on its own side. Records carry ``meter_id`` (the id at the
  period's end) when the readings report one.

Choices where the contract is silent:

* the first record starts at the first boundary after the first reading (a partial first
  period has no register value at its start, so it gets no record);
* ``interpolated`` marks a boundary bridged across readings more than ``gap_s`` apart (a
  boundary between two readings a poll apart is interpolated too, within the meter's
  resolution, and is not flagged); ``partial`` marks a period with readings but a gap
  longer than ``gap_s`` in it; ``no_data`` a period without any reading;
* values are rounded to 0.001 kWh and 0.000001 m3 at the boundaries; differences are
  taken from the rounded boundary values so sums telescope;
* cooling is weighted by the volume measured between consecutive readings (plain mean
  when no volume flowed).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.events import rfc3339

COUNTERS: dict[str, tuple[str, int]] = {"energy_kwh": ("energy", 3), "volume_m3": ("volume", 6)}


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading on the record clock: ``ts`` (Unix s, synchronised), good values only."""

    ts: float
    values: Mapping[str, float]
    flags: frozenset[str] = frozenset()
    meter_id: str | None = None  # the meter's identity, when the device reports one


@dataclass(frozen=True, slots=True)
class RecordParams:
    device: str
    role: str
    period_s: int
    flow_limit_m3h: float | None = None
    power_limit_kw: float | None = None
    rollover: Mapping[str, float] = field(default_factory=dict)
    gap_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AggState:
    """What survives a restart. ``boundary``: end of the last closed period (None before
    the first record). ``reg``: the register value reported at the boundary per counter.
    ``anchor``: per counter, the last reading (ts, register) at or before the boundary.
    ``into``: per counter, how much of the step from the anchor to the next reading lies
    before the boundary (unwrapped units), so the next period starts exactly there.
    ``last_ts``: the last reading of any kind at or before the boundary (gap detection).
    ``meter_id``: the meter's identity at the boundary (None: not reported)."""

    boundary: float | None = None
    reg: Mapping[str, float] = field(default_factory=dict)
    anchor: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    into: Mapping[str, float] = field(default_factory=dict)
    last_ts: float | None = None
    meter_id: str | None = None

    @staticmethod
    def initial() -> AggState:
        return AggState()

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "boundary": self.boundary,
                "reg": dict(self.reg),
                "anchor": {k: list(v) for k, v in self.anchor.items()},
                "into": dict(self.into),
                "last_ts": self.last_ts,
                "meter_id": self.meter_id,
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> AggState:
        d = json.loads(text)
        return AggState(
            boundary=d.get("boundary"),
            reg={str(k): float(v) for k, v in d.get("reg", {}).items()},
            anchor={str(k): (float(v[0]), float(v[1])) for k, v in d.get("anchor", {}).items()},
            into={str(k): float(v) for k, v in d.get("into", {}).items()},
            last_ts=d.get("last_ts"),
            meter_id=d.get("meter_id"),
        )


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


def _clean(samples: Iterable[Sample], after: float | None) -> list[Sample]:
    """Sorted by time, one sample per timestamp (the first to arrive), none at or before
    ``after`` (those belong to closed periods), only finite timestamps."""
    seen: set[float] = set()
    out: list[Sample] = []
    for s in samples:
        if not math.isfinite(s.ts) or (after is not None and s.ts <= after) or s.ts in seen:
            continue
        seen.add(s.ts)
        out.append(s)
    out.sort(key=lambda s: s.ts)
    return out


@dataclass
class _Point:
    """A counter observation: time, register, unwrapped cumulative value, flags of the step."""

    ts: float
    reg: float
    u: float
    event: str | None = None
    mid: str | None = None  # the meter's identity (None: not reported)


def _chain(
    name: str,
    start: tuple[float, float] | None,
    samples: Sequence[Sample],
    rollover: float | None,
    start_mid: str | None = None,
) -> list[_Point]:
    """Counter observations with an unwrapped cumulative value (u of ``start`` = 0).
    A step between two different meter ids is a ``swap``: it counts as zero."""
    pts: list[_Point] = []
    if start is not None:
        pts.append(_Point(start[0], start[1], 0.0, None, start_mid))
    for s in samples:
        v = s.values.get(name)
        if v is None or not math.isfinite(v):
            continue
        if not pts:
            pts.append(_Point(s.ts, v, 0.0, None, s.meter_id))
            continue
        p = pts[-1]
        mid = s.meter_id if s.meter_id is not None else p.mid
        if p.mid is not None and mid != p.mid:
            pts.append(_Point(s.ts, v, p.u, "swap", mid))
            continue
        d, ev = step(p.reg, v, rollover)
        pts.append(_Point(s.ts, v, p.u + d, ev, mid))
    return pts


def _at(pts: Sequence[_Point], t: float) -> tuple[float, float, float] | None:
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


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _unit(c: str) -> str:
    return c.split("_", 1)[1]


def _cooling(
    in_p: Sequence[Sample], prev_vol: float | None, rollover: float | None
) -> float | None:
    """Supply - return weighted by the volume measured since the previous reading."""
    num = den = 0.0
    plain: list[float] = []
    pv = prev_vol
    mid: str | None = None
    for s in in_p:
        sup, ret, v = s.values.get("supply_c"), s.values.get("return_c"), s.values.get("volume_m3")
        swapped = s.meter_id is not None and mid is not None and s.meter_id != mid
        if sup is not None and ret is not None:
            plain.append(sup - ret)
            if v is not None and pv is not None and not swapped:
                d, ev = step(pv, v, rollover)
                if ev != "reset":
                    num += d * (sup - ret)
                    den += d
        if v is not None:
            pv = v
        if s.meter_id is not None:
            mid = s.meter_id
    return num / den if den > 0 else _mean(plain)


def _role_fields(
    rec: dict[str, Any], in_p: Sequence[Sample], p: RecordParams, prev_vol: float | None
) -> None:
    hours = p.period_s / 3600.0

    def vals(k: str) -> list[float]:
        return [s.values[k] for s in in_p if k in s.values]

    if p.role == "heat_meter":
        vol, en = rec.get("volume_m3"), rec.get("energy_kwh")
        flows, pows = vals("flow_m3h"), vals("power_kw")
        rec["flow_avg_m3h"] = _r(vol / hours, 6) if vol is not None else None
        rec["flow_max_m3h"] = _r(max(flows), 6) if flows else None
        rec["power_avg_kw"] = _r(en / hours, 3) if en is not None else None
        rec["power_max_kw"] = _r(max(pows), 3) if pows else None
        rec["supply_avg_c"] = _r(_mean(vals("supply_c")), 2)
        rec["return_avg_c"] = _r(_mean(vals("return_c")), 2)
        rec["cooling_avg_c"] = _r(_cooling(in_p, prev_vol, p.rollover.get("volume_m3")), 2)
        rec["flow_limit_m3h"] = p.flow_limit_m3h
        fa, pa = rec["flow_avg_m3h"], rec["power_avg_kw"]
        exceeded = p.flow_limit_m3h is not None and fa is not None and fa > p.flow_limit_m3h
        if p.power_limit_kw is not None:
            rec["power_limit_kw"] = p.power_limit_kw
            exceeded = exceeded or (pa is not None and pa > p.power_limit_kw)
        rec["limit_exceeded"] = bool(exceeded)
    elif p.role == "dp_sensor":
        dps = vals("dp_kpa")
        rec["dp_min_kpa"] = _r(min(dps), 2) if dps else None
        rec["dp_avg_kpa"] = _r(_mean(dps), 2)
        rec["dp_max_kpa"] = _r(max(dps), 2) if dps else None
    else:
        lim = vals("limit_pct")
        rec["position_avg_pct"] = _r(_mean(vals("position_pct")), 1)
        rec["limit_min_pct"] = _r(min(lim), 1) if lim else None


def close_periods(
    state: AggState, samples: Iterable[Sample], p: RecordParams
) -> tuple[list[dict[str, Any]], AggState]:
    """Close every period whose end is bracketed by a reading at or after it.

    A reading belongs to the period (start, end]: one exactly on a boundary closes the
    period it ends. Returns the records in order and the new state."""
    ps = p.period_s
    ss = _clean(samples, state.boundary)
    if not ss:
        return [], state
    counters = list(COUNTERS) if p.role == "heat_meter" else []
    rollover = {c: p.rollover.get(c) for c in counters}
    chains: dict[str, list[_Point]] = {}
    u_b: dict[str, float] = {}
    reg: dict[str, float] = {}
    if state.boundary is None:
        # the first boundary: the first multiple of the period at or after the first reading
        b = float(math.ceil(ss[0].ts / ps) * ps)
        if ss[-1].ts < b:
            return [], state
        mid = next((s.meter_id for s in reversed(ss) if s.ts <= b and s.meter_id), None)
        for c in counters:
            chains[c] = _chain(c, None, ss, rollover[c])
            got = _at(chains[c], b)
            if got is not None:
                reg[c] = round(got[0], COUNTERS[c][1])
                u_b[c] = got[1]
        prev_ts: float | None = max(s.ts for s in ss if s.ts <= b)
        prev_vol = next(
            (s.values["volume_m3"] for s in reversed(ss) if s.ts <= b and "volume_m3" in s.values),
            None,
        )
        ss = [s for s in ss if s.ts > b]
    else:
        b = state.boundary
        mid = state.meter_id
        for c in counters:
            a = state.anchor.get(c)
            chains[c] = _chain(c, a, ss, rollover[c], state.meter_id)
            if a is not None and c in state.reg:
                reg[c] = state.reg[c]
                u_b[c] = state.into.get(c, 0.0)
        prev_ts = state.last_ts
        a_vol = state.anchor.get("volume_m3")
        prev_vol = a_vol[1] if a_vol else None
    records: list[dict[str, Any]] = []
    i = 0
    while ss and ss[-1].ts >= b + ps:
        e = b + ps
        in_p: list[Sample] = []
        while i < len(ss) and ss[i].ts <= e:
            in_p.append(ss[i])
            i += 1
        flags: set[str] = set()
        for s in in_p:
            flags |= s.flags
            mid = s.meter_id or mid
        flags.discard("clock_step")
        rec: dict[str, Any] = {
            "device": p.device,
            "role": p.role,
            "start": rfc3339(b),
            "end": rfc3339(e),
            "period_s": ps,
            "samples": len(in_p),
        }
        times = ([prev_ts] if prev_ts is not None else []) + [s.ts for s in in_p]
        if i < len(ss):
            times.append(ss[i].ts)
        # the longest stretch of the period not covered by readings a poll apart
        longest = max(
            (min(y, e) - max(x, b) for x, y in itertools.pairwise(times)), default=math.inf
        )
        if not in_p:
            flags |= {"no_data", "interpolated"}
        elif longest > p.gap_s:
            flags.add("partial")
        for c in counters:
            pre, unit, nd = COUNTERS[c][0], _unit(c), COUNTERS[c][1]
            got = _at(chains[c], e)
            start = reg.get(c)
            if got is None or start is None:
                # no register value at one of the boundaries: the meter's counter is unknown
                rec[f"{pre}_start_{unit}"] = start
                rec[f"{pre}_end_{unit}"] = None
                rec[f"{pre}_{unit}"] = None
                flags.add("meter_error")
                if got is not None:  # the counter is readable again: link from here on
                    reg[c] = round(got[0], nd)
                    u_b[c] = got[1]
                continue
            r_end, u_end, width = got
            if width > p.gap_s or _width(chains[c], b) > p.gap_s:
                flags.add("interpolated")
            end = round(r_end, nd)
            # the swap belongs to the period of the new meter's first reading
            swap = any(q.event == "swap" and b < q.ts <= e for q in chains[c])
            if swap:
                flags.add("meter_replaced")
            if _reset_in(chains[c], b, e):
                flags.add("counter_reset")
            if swap or "counter_reset" in flags:
                delta = round(max(0.0, u_end - u_b[c]), nd)
            else:
                d = end - start
                ro = rollover[c]
                if d < 0 and ro:
                    d += ro
                delta = round(max(0.0, d), nd)
            rec[f"{pre}_start_{unit}"] = start
            rec[f"{pre}_end_{unit}"] = end
            rec[f"{pre}_{unit}"] = delta
            reg[c] = end
            u_b[c] = u_end
        _role_fields(rec, in_p, p, prev_vol)
        if mid is not None:
            rec["meter_id"] = mid
        rec["flags"] = sorted(flags)
        records.append(rec)
        for s in in_p:
            prev_ts = s.ts
            if "volume_m3" in s.values:
                prev_vol = s.values["volume_m3"]
        b = e
    anchor: dict[str, tuple[float, float]] = {}
    into: dict[str, float] = {}
    anchor_mid: str | None = None
    for c in counters:
        pre_pts = [q for q in chains[c] if q.ts <= b]
        if pre_pts and c in reg:
            anchor[c] = (pre_pts[-1].ts, pre_pts[-1].reg)
            into[c] = u_b[c] - pre_pts[-1].u
            anchor_mid = anchor_mid or pre_pts[-1].mid
    new = AggState(
        boundary=b,
        reg=reg,
        anchor=anchor,
        into=into,
        last_ts=prev_ts,
        meter_id=anchor_mid or mid,
    )
    return records, new


def _width(pts: Sequence[_Point], t: float) -> float:
    """The time between the readings around t (0 on a reading, inf when not bracketed)."""
    for i, q in enumerate(pts):
        if q.ts == t:
            return 0.0
        if q.ts > t:
            return q.ts - pts[i - 1].ts if i else math.inf
    return math.inf


def _reset_in(pts: Sequence[_Point], b: float, e: float) -> bool:
    """A counter reset in a step that overlaps (b, e]."""
    return any(
        q.event == "reset" and q.ts > b and pts[k - 1].ts < e for k, q in enumerate(pts) if k > 0
    )
