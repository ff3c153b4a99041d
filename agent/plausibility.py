"""Heat-meter plausibility (terms 6.9-6.10): does the meter agree with itself? Pure.

No clock and no I/O: every reading carries its time ``t`` (Unix s). ``Plausibility``
keeps a small state per heat meter and returns event dicts (``kind``, ``device``, ``t``,
``value``, ``threshold`` and the evidence) like ``agent.monitors``. Readings are the
meter's *raw* values (whatever the driver's quality: an open sensor's 185.00 C is
exactly the evidence), with the names of the values that are not of good quality.

Checks (thresholds in ``PlausibilityParams``, config table ``[plausibility]``):

- energy (term 6.10): per interval between two readings, the heat implied by the
  meter's own volume register and temperatures, ``dV * k(theta_f, theta_r) * dtheta``
  (EN 1434 heat coefficient of IAPWS-IF97 water, ``agent.plausibility_water``), beside
  the energy register's increase; summed in ``window_s / 24`` buckets; at each bucket
  boundary the last ``window_s`` (a rolling day) is compared. ``|deviation| >
  drift_pct`` starts ``meter_drift_suspected``; below ``0.8 * drift_pct`` it ends
  (``meter_drift_end``). Only clean intervals count: both readings with good registers
  and temperatures, meter status 0, not longer than ``max_gap_s``, supply not below
  return, no sensor condition pending or active, no register decrease. A window is
  judged only when clean intervals cover ``min_coverage`` of it and carry at least
  ``min_energy_kwh``.
- swapped sensors: return above supply by more than ``swap_margin_k`` while the flow is
  at least ``flow_min_m3h``, for ``swap_after_s``: ``temp_sensors_swapped`` (readings
  without flow are no evidence either way).
- sensor fault: a temperature at or below ``sensor_min_c`` (shorted: 0.00 C) or at or
  above ``sensor_max_c`` (open: 185.00 C on many meters) for ``sensor_after_s``:
  ``temp_sensor_fault`` with ``sensor`` and ``reading`` ("shorted" | "open").
- stuck flow: the flow value identical to the last digit for ``stuck_after_s`` while the
  flow is at least ``flow_min_m3h`` and the power spans at least ``stuck_power_span``
  of its largest value meanwhile: ``flow_sensor_stuck``; it ends when the flow moves.
- register decrease: the energy or volume register below the previous reading (not a
  rollover at the register's rollover value): ``meter_register_decrease`` each time.

Conditions end after ``end_after_s`` of clear readings (``*_end`` with ``start`` and
``duration_s``); stuck flow ends at the first different flow value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config_types import PlausibilityParams as PlausibilityParams  # re-exported
from agent.plausibility_water import heat_kwh
from agent.timefmt import rfc3339

BUCKETS = 24


@dataclass
class _Cond:
    """One debounced condition: pending -> active -> clearing -> ended."""

    since: float | None = None  # first bad reading of the current bad run
    active: bool = False
    start: float | None = None
    clear_since: float | None = None
    worst: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Bucket:
    idx: int
    meter_kwh: float = 0.0
    implied_kwh: float = 0.0
    volume_m3: float = 0.0
    sup_vol: float = 0.0
    ret_vol: float = 0.0
    covered_s: float = 0.0


@dataclass
class _Prev:
    t: float
    energy: float | None
    volume: float | None
    supply: float | None
    ret: float | None
    clean: bool


@dataclass
class _Meter:
    prev: _Prev | None = None
    conds: dict[str, _Cond] = field(default_factory=dict)
    buckets: list[_Bucket] = field(default_factory=list)
    drift_active: bool = False
    drift_start: float | None = None
    stuck_value: float | None = None
    stuck_since: float = 0.0
    stuck_pmin: float | None = None
    stuck_pmax: float | None = None
    stuck_active: bool = False
    identity: float | None = None

    def cond(self, key: str) -> _Cond:
        c = self.conds.get(key)
        if c is None:
            c = self.conds[key] = _Cond()
        return c


def _delta(cur: float, prev: float, rollover: float | None) -> float | None:
    """Register increase, across a rollover; None when it went down."""
    d = cur - prev
    if d >= 0:
        return d
    if rollover is not None and d + rollover >= 0 and d + rollover < 0.01 * rollover:
        return d + rollover
    return None


class Plausibility:
    """Plausibility checks per heat meter; ``params`` may be replaced at any time."""

    def __init__(self, params: PlausibilityParams) -> None:
        self.params = params
        self._meters: dict[str, _Meter] = {}
        self.judged: dict[str, list[float]] = {}  # device -> deviation (%) of each window

    def active(self) -> list[tuple[str, str]]:
        out = []
        for name, m in self._meters.items():
            out += [(name, k.split(":")[0]) for k, c in m.conds.items() if c.active]
            if m.drift_active:
                out.append((name, "meter_drift_suspected"))
            if m.stuck_active:
                out.append((name, "flow_sensor_stuck"))
        return sorted(set(out))

    # --- input ------------------------------------------------------------------------

    def observe(
        self,
        device: str,
        t: float,
        values: Mapping[str, float],
        bad: Iterable[str] = (),
        rollover: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """One successful reading of heat meter ``device``: raw ``values``, the names of
        those not of good quality in ``bad``, registers' rollover values."""
        p = self.params
        if not p.enabled:
            return []
        m = self._meters.setdefault(device, _Meter())
        ident = values.get("meter_id", values.get("serial"))
        if ident is not None and m.identity is not None and ident != m.identity:
            m = self._meters[device] = _Meter()  # meter replaced: a new series
        m.identity = ident
        badset = set(bad)
        ro = rollover or {}

        def good(name: str) -> float | None:
            return values.get(name) if name not in badset else None

        sup, ret = values.get("supply_c"), values.get("return_c")
        flow, power = values.get("flow_m3h"), good("power_kw")
        out: list[dict[str, Any]] = []
        out += self._sensors(m, device, t, sup, ret)
        out += self._swap(m, device, t, sup, ret, good("flow_m3h"))
        out += self._stuck(m, device, t, flow if "flow_m3h" not in badset else None, power)
        e, v = good("energy_kwh"), good("volume_m3")
        pv = m.prev
        dec = False
        if pv is not None:
            for name, cur, old in (("energy_kwh", e, pv.energy), ("volume_m3", v, pv.volume)):
                if cur is not None and old is not None and _delta(cur, old, ro.get(name)) is None:
                    dec = True
                    out.append(
                        {
                            "kind": "meter_register_decrease",
                            "device": device,
                            "t": t,
                            "register": name,
                            "value": cur,
                            "before": old,
                            "before_time": rfc3339(pv.t),
                        }
                    )
        status = values.get("status", 0.0)
        sup_ok = sup is not None and p.sensor_min_c < sup < p.sensor_max_c
        ret_ok = ret is not None and p.sensor_min_c < ret < p.sensor_max_c
        clean = (
            status == 0
            and "status" not in badset
            and sup_ok
            and ret_ok
            and e is not None
            and v is not None
            and not m.stuck_active
            and not any(c.active or c.since is not None for c in m.conds.values())
        )
        out += self._energy(m, device, t, e, v, sup, ret, clean and not dec, ro)
        m.prev = _Prev(t, e, v, sup, ret, clean and not dec)
        return out

    # --- conditions -------------------------------------------------------------------

    def _feed(
        self,
        m: _Meter,
        key: str,
        kind: str,
        device: str,
        t: float,
        bad: bool,
        after: float,
        value: float | None,
        threshold: float,
        extra: dict[str, Any],
    ) -> list[dict[str, Any]]:
        c = m.cond(key)
        if bad:
            c.clear_since = None
            if c.since is None:
                c.since, c.worst = t, None
            if value is not None:
                c.worst = value if c.worst is None or abs(value) > abs(c.worst) else c.worst
            c.extra = extra
            if not c.active and t - c.since >= after:
                c.active, c.start = True, c.since
                return [
                    {"kind": kind, "device": device, "t": c.since, "value": c.worst,
                     "threshold": threshold, "since": rfc3339(c.since), **extra}
                ]  # fmt: skip
            return []
        if not c.active:
            c.since = None
            return []
        if c.clear_since is None:
            c.clear_since = t
        if t - c.clear_since < self.params.end_after_s:
            return []
        start = c.start if c.start is not None else c.clear_since
        ev = {
            "kind": f"{kind}_end", "device": device, "t": c.clear_since, "value": c.worst,
            "threshold": threshold, "start": rfc3339(start),
            "duration_s": round(c.clear_since - start, 3), **c.extra,
        }  # fmt: skip
        del m.conds[key]
        return [ev]

    def _sensors(
        self, m: _Meter, device: str, t: float, sup: float | None, ret: float | None
    ) -> list[dict[str, Any]]:
        p = self.params
        out: list[dict[str, Any]] = []
        for name, val in (("supply", sup), ("return", ret)):
            if val is None:
                continue
            shorted, opened = val <= p.sensor_min_c, val >= p.sensor_max_c
            extra = {"sensor": name, "reading": "shorted" if shorted else "open"}
            thr = p.sensor_min_c if shorted else p.sensor_max_c
            out += self._feed(
                m, f"temp_sensor_fault:{name}", "temp_sensor_fault", device, t,
                shorted or opened, p.sensor_after_s, val, thr, extra,
            )  # fmt: skip
        return out

    def _swap(
        self,
        m: _Meter,
        device: str,
        t: float,
        sup: float | None,
        ret: float | None,
        flow: float | None,
    ) -> list[dict[str, Any]]:
        p = self.params
        if sup is None or ret is None or flow is None or flow < p.flow_min_m3h:
            return []
        if not (p.sensor_min_c < sup < p.sensor_max_c and p.sensor_min_c < ret < p.sensor_max_c):
            return []
        diff = ret - sup
        extra = {"supply_c": sup, "return_c": ret, "flow_m3h": flow}
        return self._feed(
            m, "temp_sensors_swapped", "temp_sensors_swapped", device, t,
            diff > p.swap_margin_k, p.swap_after_s, round(diff, 3), p.swap_margin_k, extra,
        )  # fmt: skip

    def _stuck(
        self, m: _Meter, device: str, t: float, flow: float | None, power: float | None
    ) -> list[dict[str, Any]]:
        p = self.params
        if flow is None:
            return []
        out: list[dict[str, Any]] = []
        if flow != m.stuck_value:
            if m.stuck_active:
                out.append(
                    {
                        "kind": "flow_sensor_stuck_end", "device": device, "t": t,
                        "value": m.stuck_value, "threshold": p.stuck_after_s,
                        "start": rfc3339(m.stuck_since),
                        "duration_s": round(t - m.stuck_since, 3),
                    }
                )  # fmt: skip
            m.stuck_value, m.stuck_since, m.stuck_active = flow, t, False
            m.stuck_pmin = m.stuck_pmax = power
            return out
        if power is not None:
            m.stuck_pmin = power if m.stuck_pmin is None else min(m.stuck_pmin, power)
            m.stuck_pmax = power if m.stuck_pmax is None else max(m.stuck_pmax, power)
        lo, hi = m.stuck_pmin, m.stuck_pmax
        moving = lo is not None and hi is not None and hi > 0 and hi - lo >= p.stuck_power_span * hi
        if (
            not m.stuck_active
            and flow >= p.flow_min_m3h
            and moving
            and t - m.stuck_since >= p.stuck_after_s
        ):
            m.stuck_active = True
            out.append(
                {
                    "kind": "flow_sensor_stuck", "device": device, "t": m.stuck_since,
                    "value": flow, "threshold": p.stuck_after_s, "since": rfc3339(m.stuck_since),
                    "duration_s": round(t - m.stuck_since, 3), "power_min_kw": lo,
                    "power_max_kw": hi,
                }
            )  # fmt: skip
        return out

    # --- energy comparison --------------------------------------------------------------

    def _energy(
        self,
        m: _Meter,
        device: str,
        t: float,
        e: float | None,
        v: float | None,
        sup: float | None,
        ret: float | None,
        clean: bool,
        ro: Mapping[str, float],
    ) -> list[dict[str, Any]]:
        p = self.params
        bucket_s = p.window_s / BUCKETS
        idx = int(t // bucket_s)
        out: list[dict[str, Any]] = []
        if m.buckets and idx > m.buckets[-1].idx:
            out += self._judge(m, device, idx, bucket_s)
        if not m.buckets or m.buckets[-1].idx != idx:
            m.buckets.append(_Bucket(idx))
            m.buckets = [b for b in m.buckets if b.idx > idx - BUCKETS - 1]
        pv = m.prev
        if pv is None or not (clean and pv.clean) or not 0 < t - pv.t <= p.max_gap_s:
            return out
        assert e is not None and v is not None and sup is not None and ret is not None
        assert pv.energy is not None and pv.volume is not None
        assert pv.supply is not None and pv.ret is not None
        de = _delta(e, pv.energy, ro.get("energy_kwh"))
        dv = _delta(v, pv.volume, ro.get("volume_m3"))
        ts, tr = (sup + pv.supply) / 2, (ret + pv.ret) / 2
        if de is None or dv is None or ts < tr:
            return out
        b = m.buckets[-1]
        b.meter_kwh += de
        b.implied_kwh += heat_kwh(dv, ts, tr, p.flow_sensor)
        b.volume_m3 += dv
        b.sup_vol += ts * dv
        b.ret_vol += tr * dv
        b.covered_s += t - pv.t
        return out

    def _judge(self, m: _Meter, device: str, idx: int, bucket_s: float) -> list[dict[str, Any]]:
        """The window of the BUCKETS buckets before ``idx`` (all closed now)."""
        p = self.params
        win = [b for b in m.buckets if idx - BUCKETS <= b.idx < idx]
        covered = sum(b.covered_s for b in win)
        implied = sum(b.implied_kwh for b in win)
        if covered < p.min_coverage * p.window_s or implied < p.min_energy_kwh:
            return []
        meter = sum(b.meter_kwh for b in win)
        vol = sum(b.volume_m3 for b in win)
        dev = (meter - implied) / implied * 100.0
        hist = self.judged.setdefault(device, [])
        hist.append(dev)
        del hist[:-1000]
        start, end = (idx - BUCKETS) * bucket_s, idx * bucket_s
        evidence = {
            "meter_energy_kwh": round(meter, 3),
            "implied_energy_kwh": round(implied, 3),
            "deviation_pct": round(dev, 3),
            "volume_m3": round(vol, 4),
            "supply_avg_c": round(sum(b.sup_vol for b in win) / vol, 3) if vol > 0 else None,
            "return_avg_c": round(sum(b.ret_vol for b in win) / vol, 3) if vol > 0 else None,
            "window_start": rfc3339(start),
            "window_end": rfc3339(end),
            "window_s": p.window_s,
            "coverage": round(covered / p.window_s, 4),
            "flow_sensor": p.flow_sensor,
            "term": "6.10",
        }
        base = {"device": device, "t": end, "value": round(dev, 3), "threshold": p.drift_pct}
        if not m.drift_active and abs(dev) > p.drift_pct:
            m.drift_active, m.drift_start = True, start
            return [{"kind": "meter_drift_suspected", **base, **evidence}]
        if m.drift_active and abs(dev) < 0.8 * p.drift_pct:
            m.drift_active = False
            since = m.drift_start if m.drift_start is not None else start
            return [
                {"kind": "meter_drift_end", **base, **evidence, "start": rfc3339(since),
                 "duration_s": round(end - since, 3)}
            ]  # fmt: skip
        return []
