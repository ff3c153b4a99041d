"""Delivery-quality monitors: pure decisions over readings and interval records.

No clock and no I/O: every input carries its time (``t``, Unix s). ``Monitors`` keeps a
small state per (device, condition) and returns event dicts (``kind``, ``device``, ``t``,
``value``, ``threshold``, ...) that ``agent.events.event_body`` turns into bodies.

Live conditions (from ``observe``; thresholds from ``MonitorParams``, defaults of the
Finnish general terms in ``agent.config``):

- supply low (2.2): heat meter ``supply_c < supply_min_c``:
  ``supply_temp_low`` / ``supply_temp_low_end``
- supply high (2.2): heat meter ``supply_c > supply_max_c``:
  ``supply_temp_high`` / ``supply_temp_high_end``
- outage (11.2): heat meter ``supply_c < outage_supply_c``:
  ``heat_outage_start`` / ``heat_outage_end``
- dp low (2.3): dp sensor ``dp_kpa < dp_min_kpa``: ``dp_low`` / ``dp_low_end``
- offline: any device, reading not ``ok``: ``device_offline`` / ``device_online``

Debounce: a condition starts when it has been pending for ``debounce_s`` since its first
bad reading (``offline_after_s`` for offline), where a pending start is dropped only by
``debounce_s`` of continuously clear readings; it ends only when it has been clear
continuously for ``debounce_s`` (a bad reading restarts the clear run). So an excursion
shorter than ``debounce_s`` makes no event, and a value flickering across the threshold
makes one start and, once it settles clear, one end: never a storm.
A missing value (None: implausible or faulty per the driver) or a heat meter whose
``status`` is not 0 is no evidence either way for the temperature conditions; a reading
that is not ``ok`` only feeds the offline condition.

Start events: ``t`` = the first bad reading, ``value`` = the worst value while it
persisted so far, ``threshold``. End events: ``t`` = the first clear reading, ``start``
(RFC 3339), ``duration_s`` = end - start, ``value`` = the worst value of the whole
condition. ``heat_outage_end`` and ``device_online`` carry ``duration_s`` likewise.

Period conditions (from ``on_record``, each closed heat-meter interval record, contract
section 5): ``cooling_low`` (``cooling_avg_c < cooling_min``) and ``return_temp_high``
(``return_avg_c > return_max``), as start / ``*_end`` pairs over consecutive periods (a
period average is already a debounced figure: one bad period starts, one good period
ends; records without the figure are no evidence). Terms 5.5 set cooling per *billing
period*: a second check accumulates the volume-weighted cooling per calendar month (UTC)
and, at the first record of the next month, emits ``cooling_low`` with
``basis: "billing_period"`` when the month's average was below the minimum.

``flow_limit_exceeded``: the limiter reports it (once per period, as soon as it is
certain). ``on_record`` emits it (``basis: "record"``, ``power_limit_exceeded`` when only
power is over) from a record's ``limit_exceeded`` only when
``MonitorParams.limit_events_from_records`` is set: for a setup where the limiter does not
run (e.g. a power limit without a flow limit), so there are never two events per period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.finite import number
from agent.protocol import DP_SENSOR, HEAT_METER
from agent.timefmt import parse_time, rfc3339


@dataclass(frozen=True)
class MonitorParams:
    supply_min_c: float
    supply_max_c: float
    dp_min_kpa: float
    cooling_min_c: float
    return_max_c: float
    outage_supply_c: float
    debounce_s: float
    offline_after_s: float = 30.0  # failed reads this long: device_offline
    limit_events_from_records: bool = False
    billing_cooling: bool = True  # the per-month cooling check


@dataclass
class _Cond:
    """One debounced condition."""

    active: bool = False
    run_since: float | None = None  # start of the current run of readings opposing `active`
    start: float | None = None  # when the active condition started
    worst: float | None = None  # worst value of the active condition (or the start run)
    run_worst: float | None = None
    clear_since: float | None = None  # a clear run inside a pending start run


@dataclass(frozen=True)
class _Spec:
    kind: str  # start event kind
    end_kind: str
    role: str
    key: str  # value name
    bad: Callable[[float, MonitorParams], bool]
    threshold: Callable[[MonitorParams], float]
    low: bool  # lower is worse


LIVE: tuple[_Spec, ...] = (
    _Spec(
        "supply_temp_low", "supply_temp_low_end", HEAT_METER, "supply_c",
        lambda v, p: v < p.supply_min_c, lambda p: p.supply_min_c, True,
    ),
    _Spec(
        "supply_temp_high", "supply_temp_high_end", HEAT_METER, "supply_c",
        lambda v, p: v > p.supply_max_c, lambda p: p.supply_max_c, False,
    ),
    _Spec(
        "heat_outage_start", "heat_outage_end", HEAT_METER, "supply_c",
        lambda v, p: v < p.outage_supply_c, lambda p: p.outage_supply_c, True,
    ),
    _Spec(
        "dp_low", "dp_low_end", DP_SENSOR, "dp_kpa",
        lambda v, p: v < p.dp_min_kpa, lambda p: p.dp_min_kpa, True,
    ),
)  # fmt: skip

PERIOD: tuple[_Spec, ...] = (
    _Spec(
        "cooling_low", "cooling_low_end", HEAT_METER, "cooling_avg_c",
        lambda v, p: v < p.cooling_min_c, lambda p: p.cooling_min_c, True,
    ),
    _Spec(
        "return_temp_high", "return_temp_high_end", HEAT_METER, "return_avg_c",
        lambda v, p: v > p.return_max_c, lambda p: p.return_max_c, False,
    ),
)  # fmt: skip


def _worse(a: float | None, b: float, low: bool) -> float:
    if a is None:
        return b
    return min(a, b) if low else max(a, b)


@dataclass
class _Month:
    key: str
    weighted: float = 0.0  # sum of cooling x volume
    volume: float = 0.0
    plain: list[float] = field(default_factory=list)  # cooling of periods without volume
    start: float = 0.0


class Monitors:
    """Debounced delivery-quality conditions per device. ``params`` may be replaced at
    any time (remote config); the new thresholds apply from the next input on."""

    def __init__(self, params: MonitorParams) -> None:
        self.params = params
        self._conds: dict[tuple[str, str], _Cond] = {}
        self._months: dict[str, _Month] = {}

    def _cond(self, device: str, kind: str) -> _Cond:
        c = self._conds.get((device, kind))
        if c is None:
            c = self._conds[(device, kind)] = _Cond()
        return c

    def active(self) -> list[tuple[str, str]]:
        """(device, kind) of every condition in force, e.g. for `status`."""
        return sorted(k for k, c in self._conds.items() if c.active)

    def active_since(self) -> list[tuple[str, str, float | None]]:
        """(device, kind, since) of every condition in force, ``since`` the time it began."""
        return [(d, k, self._conds[(d, k)].start) for d, k in self.active()]

    # --- the debouncer ------------------------------------------------------------------

    def _feed(
        self,
        device: str,
        kinds: tuple[str, str],
        t: float,
        bad: bool,
        value: float | None,
        threshold: float,
        low: bool,
        start_after: float,
        end_after: float,
        extra: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        c = self._cond(device, kinds[0])
        out: list[dict[str, Any]] = []
        if not c.active:
            if not bad:
                # a pending start is dropped only once the clear state has held as long
                if c.run_since is not None:
                    if c.clear_since is None:
                        c.clear_since = t
                    if t - c.clear_since >= end_after:
                        c.run_since, c.run_worst, c.clear_since = None, None, None
                return out
            c.clear_since = None
            if c.run_since is None:
                c.run_since = t
            if value is not None:
                c.run_worst = _worse(c.run_worst, value, low)
            if t - c.run_since >= start_after:
                c.active, c.start, c.worst = True, c.run_since, c.run_worst
                c.run_since, c.run_worst, c.clear_since = None, None, None
                ev: dict[str, Any] = {
                    "kind": kinds[0],
                    "device": device,
                    "t": c.start,
                    "value": c.worst,
                    "threshold": threshold,
                }
                if extra:
                    ev.update(extra)
                out.append(ev)
            return out
        if bad:
            c.run_since = None
            if value is not None:
                c.worst = _worse(c.worst, value, low)
            return out
        if c.run_since is None:
            c.run_since = t
        if t - c.run_since >= end_after:
            start = c.start if c.start is not None else c.run_since
            end = c.run_since
            ev = {
                "kind": kinds[1],
                "device": device,
                "t": end,
                "value": c.worst,
                "threshold": threshold,
                "start": rfc3339(start),
                "duration_s": round(end - start, 3),
            }
            if extra:
                ev.update(extra)
            out.append(ev)
            self._conds[(device, kinds[0])] = _Cond()
        return out

    # --- inputs -------------------------------------------------------------------------

    def observe(
        self, device: str, role: str, t: float, values: dict[str, float | None], ok: bool
    ) -> list[dict[str, Any]]:
        """One live reading of one device (``values`` None where not of good quality)."""
        p = self.params
        out = self._feed(
            device, ("device_offline", "device_online"), t, not ok, None,
            p.offline_after_s, False, p.offline_after_s, p.debounce_s,
        )  # fmt: skip
        for ev in out:  # offline: seconds without a good read so far; online: how long
            ev["value"] = (
                round(t - ev["t"], 3) if ev["kind"] == "device_offline" else ev["duration_s"]
            )
        if not ok:
            return out
        status = values.get("status")
        for spec in LIVE:
            if spec.role != role:
                continue
            v = values.get(spec.key)
            if v is None or (role == HEAT_METER and status is not None and status != 0):
                continue
            out += self._feed(
                device, (spec.kind, spec.end_kind), t, spec.bad(v, p), v,
                spec.threshold(p), spec.low, p.debounce_s, p.debounce_s,
            )  # fmt: skip
        return out

    def on_record(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """One closed interval record (contract section 5 body)."""
        if rec.get("role") != HEAT_METER:
            return []
        p = self.params
        device = str(rec.get("device", ""))
        start, end = parse_time(rec.get("start")), parse_time(rec.get("end"))
        if start is None or end is None:
            return []
        out: list[dict[str, Any]] = []
        span = {"period_start": rec.get("start"), "period_s": rec.get("period_s")}
        for spec in PERIOD:
            v = number(rec.get(spec.key))
            if v is None:
                continue
            # a record is the condition over its whole period: start (or end) at its start
            out += self._feed(
                device, (spec.kind, spec.end_kind), start, spec.bad(v, p), v,
                spec.threshold(p), spec.low, 0.0, 0.0, {"basis": "period", **span},
            )  # fmt: skip
        if p.billing_cooling:
            out += self._billing(device, start, rec)
        if p.limit_events_from_records and rec.get("limit_exceeded") is True:
            out.append(self._exceeded(device, start, rec, span))
        return out

    def _billing(self, device: str, start: float, rec: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        key = datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m")
        out: list[dict[str, Any]] = []
        m = self._months.get(device)
        if m is not None and m.key != key:
            avg: float | None = None
            if m.volume > 0:
                avg = m.weighted / m.volume
            elif m.plain:
                avg = sum(m.plain) / len(m.plain)
            if avg is not None and avg < p.cooling_min_c:
                out.append(
                    {
                        "kind": "cooling_low",
                        "device": device,
                        "t": m.start,
                        "value": round(avg, 2),
                        "threshold": p.cooling_min_c,
                        "basis": "billing_period",
                        "month": m.key,
                        "duration_s": round(start - m.start, 3),
                        "volume_m3": round(m.volume, 3),
                    }
                )
            m = None
        if m is None:
            m = self._months[device] = _Month(key=key, start=start)
        cool, vol = number(rec.get("cooling_avg_c")), number(rec.get("volume_m3"))
        if cool is not None:
            if vol is not None and vol > 0:
                m.weighted += cool * vol
                m.volume += vol
            else:
                m.plain.append(cool)
        return out

    @staticmethod
    def _exceeded(
        device: str, start: float, rec: dict[str, Any], span: dict[str, Any]
    ) -> dict[str, Any]:
        fa, fl = number(rec.get("flow_avg_m3h")), number(rec.get("flow_limit_m3h"))
        flow_over = fa is not None and fl is not None and fa > fl
        if flow_over or rec.get("power_limit_kw") is None:
            kind, value, thr = "flow_limit_exceeded", fa, fl
        else:
            kind, value = "power_limit_exceeded", number(rec.get("power_avg_kw"))
            thr = number(rec.get("power_limit_kw"))
        return {
            "kind": kind,
            "device": device,
            "t": start,
            "value": value,
            "threshold": thr,
            "basis": "record",
            **span,
        }
