"""The flow/power limiter: a pure control law (no clock, no I/O).

``step(params, state, meter_input) -> (state, action)`` is called once per heat-meter
reading. Time is ``MeterInput.t`` (wall seconds); periods are aligned to multiples of
``period_s`` since the Unix epoch, like the interval records.

Control law
-----------
1. **Budget.** The volume used in the current period comes from the meter's own volume
   register (differences between readings, split linearly at the period boundary, a
   backwards step or an implausible jump replaced by ``flow x dt``). The allowance is
   ``target x limit x period``; what is left of it, spread over the time left in the
   period (at least ``horizon``), is the flow allowed from now on::

       q_allow = (target * L * P / 3600 - used) * 3600 / max(t_left, horizon)

   clamped to ``[min_flow_factor, inst_cap_factor] x L`` (the upper bound is the
   instantaneous cap: an under-used period may catch up, but never at more than
   ``inst_cap_factor`` times the contract).
2. **Ratio adaptation.** The valve's gain (flow per % opening) is not assumed: the
   desired opening is the opening in force scaled by allowed over measured flow,
   ``pct = pct_now * (q_allow / flow) ** gain`` (a multiplicative integral controller).
   From a point where the building, not the valve, sets the flow the ratio over-estimates
   the opening, so the law closes from above and never throttles below what it needs.
   The power limit works the same way on the energy register and the meter's power;
   the smaller opening wins.
3. **Writes.** Output is the actuator's opening limit in % (0..100, ``resolution_pct``
   steps). While limiting, a new value is written only when it moved by at least
   ``deadband_pct`` and ``min_write_interval_s`` has passed since the last write, or
   when ``refresh_s`` has passed (the actuator's watchdog must be refreshed).
4. **Engage / release.** Limiting starts (``flow_limit_enforced``) when the measured
   flow exceeds the allowed flow by ``engage_margin`` (or power likewise). It ends
   (``flow_limit_released``, ``default_pct`` written once) when the law has wanted the
   valve fully open, with the flow within the allowance, for ``release_hold_s``.
5. **Fail-safe.** Readings invalid or implausible (flow negative or above
   ``max_flow_factor x L``) for longer than ``stale_s`` since the last good one: if a
   limit is in force, ``default_pct`` is written once; ``limiter_failsafe`` is emitted
   (enforce on). Good readings again: ``limiter_failsafe_end`` with ``duration_s``, and
   the law resumes (re-engaging with a new ``flow_limit_enforced`` if still needed). If
   the agent itself dies the actuator's own watchdog releases the limit.
6. **Reporting.** ``flow_limit_exceeded`` (``power_limit_exceeded`` for power) once per
   period that was observed from its start: as soon as the used volume exceeds the
   allowance (``basis: "running"``, value = the projected period average at the current
   flow), else when the period closes over the limit (``basis: "actual"``). With
   ``enforce = False`` nothing is ever written and nothing is enforced; the exceedance
   events still come.

All events carry ``kind``, ``t`` (Unix s; ``agent.events.event_body`` turns it into
``time``), ``value``, ``threshold`` and ``source: "limiter"`` (``device`` when
``LimiterParams.device`` is set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

FLOW_EPS_M3H = 1e-6
POWER_EPS_KW = 1e-3
RATIO_MAX = 4.0


@dataclass(frozen=True)
class LimiterParams:
    flow_limit_m3h: float | None
    power_limit_kw: float | None
    period_s: int
    enforce: bool
    refresh_s: float
    # --- tuning (defaults measured with bench/limiter.py) ---
    target: float = 0.99  # aim at this fraction of the allowance
    inst_cap_factor: float = 1.25  # instantaneous cap, x limit
    min_flow_factor: float = 0.5  # never aim below this x limit (heat keeps flowing)
    horizon_s: float = 30.0  # the remaining budget is spread over at least this ...
    horizon_frac: float = 0.1  # ... or this fraction of the period, whichever is smaller
    gain: float = 0.7  # ratio-adaptation exponent per reading (1 = full correction)
    deadband_pct: float = 0.3  # write only a change at least this large ...
    min_write_interval_s: float = 2.0  # ... and at most this often
    resolution_pct: float = 0.1  # the actuator register's step
    min_pct: float = 1.0  # the law never closes the valve further
    default_pct: float = 100.0  # released
    engage_margin: float = 0.02  # engage when flow > q_allow x (1 + this)
    release_hold_s: float = 30.0  # fully open and within the allowance this long: release
    stale_s: float = 30.0  # fail-safe after this long without a good reading
    max_flow_factor: float = 10.0  # a flow (or register rate) above this x limit is absurd
    volume_slack_m3: float = 0.01  # register resolution allowance in the jump check
    energy_slack_kwh: float = 1.0
    volume_rollover_m3: float | None = None  # None: a backwards step is a reset
    energy_rollover_kwh: float | None = None
    exceed_tolerance: float = 0.0  # report a period over limit x (1 + this)
    device: str | None = None  # names the meter in events


@dataclass(frozen=True)
class Track:
    """Accounting of one counter (volume or energy) in the current period."""

    period: float | None = None  # start of the period being accounted
    used: float = 0.0  # register units used since the period start
    full: bool = False  # observed from the period start (no long gap)
    reg: float | None = None  # last register value
    reported: float | None = None  # period start whose exceedance was reported


@dataclass(frozen=True)
class LimiterState:
    last_t: float | None = None  # time of the last good reading
    vol: Track = Track()
    energy: Track = Track()
    applied_pct: float | None = None  # last written limit (None: never written)
    last_write_t: float | None = None
    limiting: bool = False
    since: float | None = None  # limiting since
    open_since: float | None = None  # the law has wanted the valve fully open since
    failsafe_since: float | None = None  # fail-safe in force since (last good reading)
    bad_since: float | None = None  # first bad reading after a good one

    @staticmethod
    def initial() -> LimiterState:
        return LimiterState()


@dataclass(frozen=True)
class MeterInput:
    t: float
    volume_m3: float | None
    energy_kwh: float | None
    flow_m3h: float | None
    power_kw: float | None
    valid: bool


@dataclass(frozen=True)
class Action:
    write_pct: float | None
    events: list[dict[str, Any]]
    limiting: bool


@dataclass(frozen=True)
class _Closed:
    start: float
    used: float
    full: bool


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _quantise(pct: float, res: float) -> float:
    q = round(pct / res) * res if res > 0 else pct
    return round(_clamp(q, 0.0, 100.0), 6)


def _account(
    tr: Track,
    period_s: float,
    t: float,
    last_t: float | None,
    reg: float,
    rate_per_h: float,
    rollover: float | None,
    max_rate_per_h: float,
    slack: float,
    gap_s: float,
) -> tuple[Track, list[_Closed]]:
    """Advance one counter's period accounting to the reading (t, reg)."""
    ps = math.floor(t / period_s) * period_s
    rate = max(rate_per_h, 0.0)
    if tr.period is None or tr.reg is None or last_t is None or t <= last_t:
        # first reading (or after a clock step back): assume the current rate since the
        # period start; the period counts as observed only if that is about now
        used = rate * (t - ps) / 3600.0
        full = t - ps <= min(gap_s, 0.05 * period_s)
        return replace(tr, period=ps, used=used, full=full, reg=reg), []
    dt = t - last_t
    d = reg - tr.reg
    if d < 0 and rollover:
        d += rollover
    if d < 0 or d > max_rate_per_h * dt / 3600.0 + slack:
        d = rate * dt / 3600.0  # counter reset or absurd jump: re-anchor, estimate
    closed: list[_Closed] = []
    period, used, full = tr.period, tr.used, tr.full
    if t >= period + period_s:
        end = period + period_s
        f = _clamp((end - last_t) / dt, 0.0, 1.0)
        closed.append(_Closed(period, used + d * f, full and dt <= gap_s))
        period = ps
        used = d * _clamp((t - ps) / dt, 0.0, 1.0)
        full = dt <= gap_s
    else:
        used += d
    return replace(tr, period=period, used=used, full=full, reg=reg), closed


def _allowed_rate(limit: float, used: float, period: float, p: LimiterParams, t: float) -> float:
    """The rate (per hour) allowed for the rest of the period: the target rate plus the
    deviation from the on-target budget, corrected over the time left (at least the
    horizon, so the last seconds of a period neither amplify register noise nor leave
    budget unused)."""
    ps = float(p.period_s)
    aim = p.target * limit
    left = _clamp(period + ps - t, 0.0, ps)
    deviation = (aim * ps - aim * left) / 3600.0 - used  # > 0: under budget so far
    horizon = max(min(p.horizon_s, p.horizon_frac * ps), 1e-9)
    q = aim + deviation * 3600.0 / max(left, horizon)
    return _clamp(q, p.min_flow_factor * limit, p.inst_cap_factor * limit)


def _ratio_pct(base: float, allowed: float, measured: float, eps: float, gain: float) -> float:
    if measured <= eps:
        return 100.0  # nothing flows: nothing to limit
    r = _clamp(allowed / measured, 1.0 / RATIO_MAX, RATIO_MAX)
    return base * math.pow(r, gain)


def _ev(
    p: LimiterParams,
    kind: str,
    t: float,
    value: float | None,
    threshold: float | None,
    **extra: Any,
) -> dict[str, Any]:
    ev: dict[str, Any] = {"kind": kind, "t": t, "source": "limiter"}
    if p.device is not None:
        ev["device"] = p.device
    ev["value"] = None if value is None else round(value, 4)
    ev["threshold"] = threshold
    ev.update(extra)
    return ev


def _write(s: LimiterState, t: float, pct: float) -> LimiterState:
    return replace(s, applied_pct=pct, last_write_t=t)


def _plausible(p: LimiterParams, m: MeterInput) -> bool:
    if not m.valid:
        return False
    need: list[tuple[float | None, float | None]] = []
    if p.flow_limit_m3h is not None:
        need += [(m.volume_m3, None), (m.flow_m3h, p.flow_limit_m3h)]
    if p.power_limit_kw is not None:
        need += [(m.energy_kwh, None), (m.power_kw, p.power_limit_kw)]
    for v, lim in need:
        if v is None or not math.isfinite(v) or v < 0:
            return False
        if lim is not None and v > p.max_flow_factor * lim:
            return False
    return True


def _bad_reading(p: LimiterParams, s: LimiterState, m: MeterInput) -> tuple[LimiterState, Action]:
    bad_since = s.bad_since if s.bad_since is not None else m.t
    s = replace(s, bad_since=bad_since)
    ref = s.last_t if s.last_t is not None else bad_since
    if s.failsafe_since is not None or m.t - ref <= p.stale_s:
        return s, Action(None, [], s.limiting)
    # stale: release once
    events: list[dict[str, Any]] = []
    write: float | None = None
    held = s.applied_pct is not None and s.applied_pct < p.default_pct
    if p.enforce:
        events.append(
            _ev(
                p,
                "limiter_failsafe",
                m.t,
                m.t - ref,
                p.stale_s,
                released=held,
                reason="meter readings invalid or stale",
            )
        )
        if held:
            write = p.default_pct
            s = _write(s, m.t, write)
    s = replace(s, failsafe_since=ref, limiting=False, since=None, open_since=None)
    return s, Action(write, events, False)


def step(p: LimiterParams, s: LimiterState, m: MeterInput) -> tuple[LimiterState, Action]:
    """One reading in, the new state and what to do out. Pure."""
    if p.flow_limit_m3h is None and p.power_limit_kw is None:
        return s, Action(None, [], False)
    if not _plausible(p, m):
        return _bad_reading(p, s, m)
    if s.last_t is not None and m.t == s.last_t:
        return s, Action(None, [], s.limiting)  # the same reading again
    t = m.t
    events: list[dict[str, Any]] = []
    ps = float(p.period_s)
    gap = p.stale_s
    if s.failsafe_since is not None:
        if p.enforce:
            events.append(
                _ev(
                    p,
                    "limiter_failsafe_end",
                    t,
                    t - s.failsafe_since,
                    p.stale_s,
                    duration_s=round(t - s.failsafe_since, 3),
                )
            )
        s = replace(s, failsafe_since=None)
    s = replace(s, bad_since=None)

    # --- 1. accounting and the allowed rates --------------------------------------------
    rates: list[tuple[str, float, float, float, float]] = []  # name, allowed, measured, eps, lim
    vol, energy = s.vol, s.energy
    if p.flow_limit_m3h is not None:
        lim = p.flow_limit_m3h
        assert m.volume_m3 is not None and m.flow_m3h is not None
        vol, closed = _account(
            vol,
            ps,
            t,
            s.last_t,
            m.volume_m3,
            m.flow_m3h,
            p.volume_rollover_m3,
            p.max_flow_factor * lim,
            p.volume_slack_m3,
            gap,
        )
        vol, evs = _exceeded(p, "flow", lim, vol, closed, t, m.flow_m3h)
        events += evs
        assert vol.period is not None
        rates.append(
            ("flow", _allowed_rate(lim, vol.used, vol.period, p, t), m.flow_m3h, FLOW_EPS_M3H, lim)
        )
    if p.power_limit_kw is not None:
        lim = p.power_limit_kw
        assert m.energy_kwh is not None and m.power_kw is not None
        energy, closed = _account(
            energy,
            ps,
            t,
            s.last_t,
            m.energy_kwh,
            m.power_kw,
            p.energy_rollover_kwh,
            p.max_flow_factor * lim,
            p.energy_slack_kwh,
            gap,
        )
        energy, evs = _exceeded(p, "power", lim, energy, closed, t, m.power_kw)
        events += evs
        assert energy.period is not None
        rates.append(
            (
                "power",
                _allowed_rate(lim, energy.used, energy.period, p, t),
                m.power_kw,
                POWER_EPS_KW,
                lim,
            )
        )
    s = replace(s, vol=vol, energy=energy, last_t=t)

    if not p.enforce:
        if s.limiting:  # enforcement switched off while limiting: the watchdog releases
            events.append(
                _ev(
                    p,
                    "flow_limit_released",
                    t,
                    None,
                    p.flow_limit_m3h,
                    reason="enforce_off",
                    duration_s=_dur(s, t),
                )
            )
        return replace(s, limiting=False, since=None, open_since=None), Action(None, events, False)

    # --- 2. the opening the law wants ---------------------------------------------------
    base = s.applied_pct if s.applied_pct is not None else p.default_pct
    gain = p.gain if s.limiting else 1.0
    desired = min(_ratio_pct(base, a, meas, eps, gain) for _, a, meas, eps, _ in rates)
    desired = _clamp(desired, p.min_pct, 100.0)
    over = [(n, meas, a) for n, a, meas, _, _ in rates if meas > a * (1.0 + p.engage_margin)]
    within = all(meas <= a for _, a, meas, _, _ in rates)

    # --- 3. engage / release / write ----------------------------------------------------
    write: float | None = None
    if not s.limiting:
        if over:
            name, meas, a = over[0]
            lim_of = {n: lim for n, _, _, _, lim in rates}
            write = _quantise(desired, p.resolution_pct)
            s = _write(replace(s, limiting=True, since=t, open_since=None), t, write)
            events.append(
                _ev(
                    p,
                    "flow_limit_enforced",
                    t,
                    meas,
                    lim_of[name],
                    by=name,
                    allowed_now=round(a, 4),
                    limit_pct=write,
                )
            )
        return s, Action(write, events, s.limiting)

    open_since = s.open_since
    if desired >= 100.0 - 1e-9 and within:
        open_since = open_since if open_since is not None else t
    else:
        open_since = None
    s = replace(s, open_since=open_since)
    if open_since is not None and t - open_since >= p.release_hold_s:
        write = p.default_pct
        events.append(
            _ev(
                p,
                "flow_limit_released",
                t,
                rates[0][2],
                rates[0][4],
                reason="demand_below_limit",
                duration_s=_dur(s, t),
            )
        )
        s = _write(replace(s, limiting=False, since=None, open_since=None), t, write)
        return s, Action(write, events, False)
    want = _quantise(desired, p.resolution_pct)
    since_write = math.inf if s.last_write_t is None else t - s.last_write_t
    moved = s.applied_pct is None or abs(want - s.applied_pct) >= p.deadband_pct - 1e-9
    if (moved and since_write >= p.min_write_interval_s) or since_write >= p.refresh_s:
        write = want
        s = _write(s, t, want)
    return s, Action(write, events, True)


def _dur(s: LimiterState, t: float) -> float | None:
    return None if s.since is None else round(t - s.since, 3)


def _exceeded(
    p: LimiterParams,
    name: str,
    lim: float,
    tr: Track,
    closed: list[_Closed],
    t: float,
    rate: float,
) -> tuple[Track, list[dict[str, Any]]]:
    """``<name>_limit_exceeded`` once per fully observed period."""
    ps = float(p.period_s)
    allowance = lim * ps / 3600.0 * (1.0 + p.exceed_tolerance)
    kind = f"{name}_limit_exceeded"
    events: list[dict[str, Any]] = []
    for c in closed:
        if c.full and c.used > allowance and tr.reported != c.start:
            events.append(
                _ev(
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
                    enforce=p.enforce,
                )
            )
    if tr.period is not None and tr.full and tr.used > allowance and tr.reported != tr.period:
        left = tr.period + ps - t
        projected = (tr.used + rate * left / 3600.0) * 3600.0 / ps
        events.append(
            _ev(
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
                detected=t,
                enforce=p.enforce,
            )
        )
        tr = replace(tr, reported=tr.period)
    return tr, events
