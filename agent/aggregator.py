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

from agent.counter_chain import Point, bracket_width, chain, reset_in, value_at
from agent.counter_chain import Sample as Sample  # re-exported: the aggregator takes Samples
from agent.counter_chain import step as step  # re-exported: part of this module's surface
from agent.protocol import DP_SENSOR, HEAT_METER
from agent.timefmt import rfc3339

COUNTERS: dict[str, tuple[str, int]] = {"energy_kwh": ("energy", 3), "volume_m3": ("volume", 6)}
# per counter, the record's fields: (register at the start, register at the end, delta)
COUNTER_FIELDS: dict[str, tuple[str, str, str]] = {
    "energy_kwh": ("energy_start_kwh", "energy_end_kwh", "energy_kwh"),
    "volume_m3": ("volume_start_m3", "volume_end_m3", "volume_m3"),
}


@dataclass(frozen=True, slots=True)
class RecordParams:
    device: str
    role: str
    period_s: int
    flow_limit_m3h: float | None = None
    power_limit_kw: float | None = None
    rollover: Mapping[str, float] = field(default_factory=dict)
    gap_s: float = 10.0
    # how long a period may wait past its end for a reading that carries the registers
    # (a meter answering with an error status has none); past it, the period closes with
    # the registers unknown (``meter_error``) and the series is taken up again afterwards
    counter_wait_s: float = 900.0


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


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


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

    if p.role == HEAT_METER:
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
    elif p.role == DP_SENSOR:
        dps = vals("dp_kpa")
        rec["dp_min_kpa"] = _r(min(dps), 2) if dps else None
        rec["dp_avg_kpa"] = _r(_mean(dps), 2)
        rec["dp_max_kpa"] = _r(max(dps), 2) if dps else None
    else:
        lim = vals("limit_pct")
        rec["position_avg_pct"] = _r(_mean(vals("position_pct")), 1)
        rec["limit_min_pct"] = _r(min(lim), 1) if lim else None


@dataclass
class _Run:
    """The working state of one ``close_periods`` call: the boundary ``b`` reached so far,
    the counters' chains, their register (``reg``) and unwrapped value (``u_b``) at ``b``,
    the last reading's time and volume at or before ``b`` and the meter's identity."""

    b: float
    chains: dict[str, list[Point]]
    reg: dict[str, float]
    u_b: dict[str, float]
    prev_ts: float | None
    prev_vol: float | None
    mid: str | None


def close_periods(
    state: AggState, samples: Iterable[Sample], p: RecordParams
) -> tuple[list[dict[str, Any]], AggState]:
    """Close every period whose end is bracketed by a reading at or after it.

    A reading belongs to the period (start, end]: one exactly on a boundary closes the
    period it ends. Returns the records in order and the new state."""
    ss = _clean(samples, state.boundary)
    if not ss:
        return [], state
    counters = list(COUNTERS) if p.role == HEAT_METER else []
    rollover = {c: p.rollover.get(c) for c in counters}
    horizon = _close_horizon(ss, counters, p)
    if state.boundary is None:
        started = _first_run(ss, p.period_s, counters, rollover, horizon)
        if started is None:
            return [], state
        run, ss = started
    else:
        run = _resumed_run(state, ss, counters, rollover)
    records: list[dict[str, Any]] = []
    i = 0
    while ss and horizon >= run.b + p.period_s:
        in_p, i = _period_samples(ss, i, run.b + p.period_s)
        after = ss[i].ts if i < len(ss) else None
        records.append(_record(run, in_p, after, counters, rollover, p))
    return records, _next_state(run, counters)


def _close_horizon(ss: list[Sample], counters: list[str], p: RecordParams) -> float:
    """The latest boundary that may close now: a heat meter's period waits for a reading
    that carries every register after its end (so its end value is interpolated, never
    left unknown, across a short run of error replies), at most ``counter_wait_s``."""
    newest = ss[-1].ts
    if not counters:
        return newest
    full = next((s.ts for s in reversed(ss) if all(c in s.values for c in counters)), None)
    waited = newest - p.counter_wait_s
    return max(full, waited) if full is not None else waited


def _first_run(
    ss: list[Sample],
    ps: int,
    counters: list[str],
    rollover: Mapping[str, float | None],
    horizon: float,
) -> tuple[_Run, list[Sample]] | None:
    """Before the first record: the first boundary is the first multiple of the period at
    or after the first reading; None while no reading brackets it. Returns the run and the
    samples after that boundary."""
    b = float(math.ceil(ss[0].ts / ps) * ps)
    if horizon < b:
        return None
    mid = next((s.meter_id for s in reversed(ss) if s.ts <= b and s.meter_id), None)
    chains: dict[str, list[Point]] = {}
    u_b: dict[str, float] = {}
    reg: dict[str, float] = {}
    for c in counters:
        chains[c] = chain(c, None, ss, rollover[c])
        got = value_at(chains[c], b)
        if got is not None:
            reg[c] = round(got[0], COUNTERS[c][1])
            u_b[c] = got[1]
    prev_ts: float | None = max(s.ts for s in ss if s.ts <= b)
    prev_vol = next(
        (s.values["volume_m3"] for s in reversed(ss) if s.ts <= b and "volume_m3" in s.values),
        None,
    )
    run = _Run(b, chains, reg, u_b, prev_ts, prev_vol, mid)
    return run, [s for s in ss if s.ts > b]


def _resumed_run(
    state: AggState,
    ss: list[Sample],
    counters: list[str],
    rollover: Mapping[str, float | None],
) -> _Run:
    """After a record: the run continues from the state's boundary and anchors."""
    chains: dict[str, list[Point]] = {}
    u_b: dict[str, float] = {}
    reg: dict[str, float] = {}
    for c in counters:
        a = state.anchor.get(c)
        chains[c] = chain(c, a, ss, rollover[c], state.meter_id)
        if a is not None and c in state.reg:
            reg[c] = state.reg[c]
            u_b[c] = state.into.get(c, 0.0)
    a_vol = state.anchor.get("volume_m3")
    prev_vol = a_vol[1] if a_vol else None
    assert state.boundary is not None
    return _Run(state.boundary, chains, reg, u_b, state.last_ts, prev_vol, state.meter_id)


def _period_samples(ss: Sequence[Sample], i: int, e: float) -> tuple[list[Sample], int]:
    """The samples from index ``i`` up to and including ``e``, and the index after them."""
    in_p: list[Sample] = []
    while i < len(ss) and ss[i].ts <= e:
        in_p.append(ss[i])
        i += 1
    return in_p, i


def _record(
    run: _Run,
    in_p: list[Sample],
    after: float | None,
    counters: list[str],
    rollover: Mapping[str, float | None],
    p: RecordParams,
) -> dict[str, Any]:
    """The record of the period (run.b, run.b + period] from its samples ``in_p`` (``after``:
    the time of the next reading, if any); advances the run to the period's end."""
    b, e = run.b, run.b + p.period_s
    flags: set[str] = set()
    for s in in_p:
        flags |= s.flags
        run.mid = s.meter_id or run.mid
    flags.discard("clock_step")
    rec: dict[str, Any] = {
        "device": p.device,
        "role": p.role,
        "start": rfc3339(b),
        "end": rfc3339(e),
        "period_s": p.period_s,
        "samples": len(in_p),
    }
    _coverage_flags(flags, run.prev_ts, in_p, after, b, e, p.gap_s)
    for c in counters:
        _counter_fields(rec, flags, run, c, e, rollover[c], p.gap_s)
    _role_fields(rec, in_p, p, run.prev_vol)
    if run.mid is not None:
        rec["meter_id"] = run.mid
    rec["flags"] = sorted(flags)
    for s in in_p:
        run.prev_ts = s.ts
        if "volume_m3" in s.values:
            run.prev_vol = s.values["volume_m3"]
    run.b = e
    return rec


def _coverage_flags(
    flags: set[str],
    prev_ts: float | None,
    in_p: Sequence[Sample],
    after: float | None,
    b: float,
    e: float,
    gap_s: float,
) -> None:
    """Into ``flags``: ``no_data`` + ``interpolated`` for a period without readings,
    ``partial`` for one with a stretch longer than ``gap_s`` not covered by readings a poll
    apart (``after``: the time of the reading after the period, if any)."""
    times = ([prev_ts] if prev_ts is not None else []) + [s.ts for s in in_p]
    if after is not None:
        times.append(after)
    longest = max((min(y, e) - max(x, b) for x, y in itertools.pairwise(times)), default=math.inf)
    if not in_p:
        flags |= {"no_data", "interpolated"}
    elif longest > gap_s:
        flags.add("partial")


def _counter_fields(
    rec: dict[str, Any],
    flags: set[str],
    run: _Run,
    c: str,
    e: float,
    rollover: float | None,
    gap_s: float,
) -> None:
    """Counter ``c``'s start, end and delta fields of the period (run.b, e] into ``rec``,
    its flags into ``flags``; moves the counter's register and unwrapped value to ``e``."""
    start_field, end_field, delta_field = COUNTER_FIELDS[c]
    nd = COUNTERS[c][1]
    b, pts = run.b, run.chains[c]
    got = value_at(pts, e)
    start = run.reg.get(c)
    if got is None or start is None:
        # no register value at one of the boundaries: the meter's counter is unknown
        rec[start_field] = start
        rec[end_field] = None
        rec[delta_field] = None
        flags.add("meter_error")
        if got is not None:  # the counter is readable again: link from here on
            run.reg[c] = round(got[0], nd)
            run.u_b[c] = got[1]
        return
    r_end, u_end, width = got
    if width > gap_s or bracket_width(pts, b) > gap_s:
        flags.add("interpolated")
    end = round(r_end, nd)
    # the swap belongs to the period of the new meter's first reading
    swap = any(q.event == "swap" and b < q.ts <= e for q in pts)
    if swap:
        flags.add("meter_replaced")
    if reset_in(pts, b, e):
        flags.add("counter_reset")
    if swap or "counter_reset" in flags:
        delta = round(max(0.0, u_end - run.u_b[c]), nd)
    else:
        d = end - start
        if d < 0 and rollover:
            d += rollover
        delta = round(max(0.0, d), nd)
    rec[start_field] = start
    rec[end_field] = end
    rec[delta_field] = delta
    run.reg[c] = end
    run.u_b[c] = u_end


def _next_state(run: _Run, counters: list[str]) -> AggState:
    """The state at the run's last boundary: per counter the last reading at or before it
    and how far into the step after it the boundary lies."""
    anchor: dict[str, tuple[float, float]] = {}
    into: dict[str, float] = {}
    anchor_mid: str | None = None
    for c in counters:
        pre_pts = [q for q in run.chains[c] if q.ts <= run.b]
        if pre_pts and c in run.reg:
            anchor[c] = (pre_pts[-1].ts, pre_pts[-1].reg)
            into[c] = run.u_b[c] - pre_pts[-1].u
            anchor_mid = anchor_mid or pre_pts[-1].mid
    return AggState(
        boundary=run.b,
        reg=run.reg,
        anchor=anchor,
        into=into,
        last_ts=run.prev_ts,
        meter_id=anchor_mid or run.mid,
    )
