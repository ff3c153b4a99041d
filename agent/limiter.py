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
2. **Opening.** From where the valve is (the actuator's reported position; the limit in
   force when the actuator reports none) and what flows there, the opening that passes
   the allowed flow, by a model of the valve's characteristic (linear:
   ``pct = pos * (q_allow / flow) ** gain``; equal-percentage: ``pct = pos + gain * 100 *
   ln(q_allow / flow) / ln(rangeability)``). Slow plants: after a command the law waits
   until the valve is at rest (reported position at the command, or the travel model
   ``stroke_s`` says it arrived and the position stopped moving) and the meter has shown
   a whole fresh refresh measured after that (its refresh interval is estimated from the
   readings); only then does it correct again, so nothing winds up while the valve moves
   or the meter still shows the old flow. The return-temperature limitation
   (``return_max_c``) adds an allowed flow of its own; a timed override lowers the
   limits (``agent.limiter_override``).
   From a point where the building, not the valve, sets the flow the ratio over-estimates
   the opening, so the law closes from above and never throttles below what it needs.
   The power limit works the same way on the energy register and the meter's power;
   the smaller opening wins.
3. **Writes.** Output is the actuator's opening limit in % (0..100, ``resolution_pct``
   steps). While limiting, a new value is written only at a correction when it moved by
   at least ``deadband_pct`` and ``min_write_interval_s`` has passed since the last
   write, or when ``refresh_s`` has passed (the actuator's watchdog must be refreshed;
   ``Action.refresh`` marks those).
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
from dataclasses import dataclass
from typing import Any

from agent import limiter_law as law
from agent.limiter_events import dur, ev, exceeded
from agent.limiter_state import LimiterParams, LimiterState, Override, Track, evolve

__all__ = ["Action", "LimiterParams", "LimiterState", "MeterInput", "Override", "Track", "step"]

FLOW_EPS_M3H = 1e-6
POWER_EPS_KW = 1e-3


@dataclass(frozen=True)
class MeterInput:
    t: float
    volume_m3: float | None
    energy_kwh: float | None
    flow_m3h: float | None
    power_kw: float | None
    valid: bool
    position_pct: float | None = None  # the actuator's reported position, if known
    return_c: float | None = None


@dataclass(frozen=True)
class Action:
    write_pct: float | None
    events: list[dict[str, Any]]
    limiting: bool
    refresh: bool = False  # the write only refreshes the actuator's watchdog


def _write(
    s: LimiterState, t: float, pct: float, p: LimiterParams, pos: float | None
) -> LimiterState:
    """A new command: the valve travels from where it is (reported, else the old command)."""
    frm = pos if pos is not None else (s.applied_pct if s.applied_pct is not None else 100.0)
    return evolve(
        s,
        applied_pct=pct,
        last_write_t=t,
        settle_t=t + law.travel_s(p, frm, pct),
        rest_since=None,
    )


def effective(p: LimiterParams, s: LimiterState, t: float) -> LimiterParams:
    """The limits in force: the contract's, lowered by an override in force."""
    o = s.override
    if o is None or t >= o.until:
        return p
    f, w = p.flow_limit_m3h, p.power_limit_kw
    if o.flow_limit_m3h is not None:
        f = o.flow_limit_m3h if f is None else min(f, o.flow_limit_m3h)
    if o.power_limit_kw is not None:
        w = o.power_limit_kw if w is None else min(w, o.power_limit_kw)
    return evolve(p, flow_limit_m3h=f, power_limit_kw=w)


def _expire(
    p: LimiterParams, s: LimiterState, t: float
) -> tuple[LimiterState, list[dict[str, Any]]]:
    o = s.override
    if o is None or t < o.until:
        return s, []
    e = ev(
        p,
        "limit_override_end",
        o.until,
        o.flow_limit_m3h if o.flow_limit_m3h is not None else o.power_limit_kw,
        p.flow_limit_m3h if o.flow_limit_m3h is not None else p.power_limit_kw,
        id=o.id,
        reason="expired",
        duration_s=round(o.until - o.since, 3),
    )
    return evolve(s, override=None), [e]


def _plausible(p: LimiterParams, m: MeterInput) -> bool:
    if not m.valid:
        return False
    need: list[tuple[float | None, float | None]] = []
    if p.flow_limit_m3h is not None or p.return_max_c is not None:
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
    s = evolve(s, bad_since=bad_since)
    ref = s.last_t if s.last_t is not None else bad_since
    if s.failsafe_since is not None or m.t - ref <= p.stale_s:
        return s, Action(None, [], s.limiting)
    # stale: release once
    events: list[dict[str, Any]] = []
    write: float | None = None
    held = s.applied_pct is not None and s.applied_pct < p.default_pct
    if p.enforce:
        events.append(
            ev(
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
            s = _write(s, m.t, write, p, None)
    s = evolve(s, failsafe_since=ref, limiting=False, since=None, open_since=None)
    return s, Action(write, events, False)


Rate = tuple[str, float, float, float, float]  # name, allowed, measured, eps, limit


def _budget(
    p: LimiterParams, contract: LimiterParams, s: LimiterState, m: MeterInput
) -> tuple[LimiterState, list[Rate], list[dict[str, Any]]]:
    """Accounting of the period (registers), exceedance (against the contract) and the
    rates allowed now (against the limits in force)."""
    t, ps, rates, events = m.t, float(p.period_s), [], []
    vol, energy = s.vol, s.energy
    specs = (
        ("flow", p.flow_limit_m3h, contract.flow_limit_m3h, m.volume_m3, m.flow_m3h,
         p.volume_rollover_m3, p.volume_slack_m3, p.volume_resolution_m3, FLOW_EPS_M3H),
        ("power", p.power_limit_kw, contract.power_limit_kw, m.energy_kwh, m.power_kw,
         p.energy_rollover_kwh, p.energy_slack_kwh, p.energy_resolution_kwh, POWER_EPS_KW),
    )  # fmt: skip
    for name, lim, clim, reg, rate, ro, slack, res, eps in specs:
        if lim is None:
            continue
        assert reg is not None and rate is not None
        tr = vol if name == "flow" else energy
        tr, closed = law.account(
            tr, ps, t, s.last_t, reg, rate, ro, p.max_flow_factor * lim, slack, p.stale_s
        )
        tr, evs = exceeded(p, name, clim if clim is not None else lim, res, tr, closed, t, rate)
        events += evs
        assert tr.period is not None
        rates.append((name, law.allowed_rate(lim, tr.used, tr.period, p, s, t), rate, eps, lim))
        vol, energy = (tr, energy) if name == "flow" else (vol, tr)
    return evolve(s, vol=vol, energy=energy, last_t=t), rates, events


def _return_limit(
    p: LimiterParams, s: LimiterState, m: MeterInput, act: bool
) -> tuple[LimiterState, Rate | None, list[dict[str, Any]]]:
    """The return-temperature limitation: engage after ``return_hold_s`` above
    ``return_max_c``, then shrink (or grow back) its allowed flow at each correction;
    release after ``return_hold_s`` at or below ``return_max_c - return_hyst_c``."""
    ret, flow, t, hi = m.return_c, m.flow_m3h, m.t, p.return_max_c
    if hi is None or ret is None or flow is None:
        if s.ret_allow is None:
            return s, None, []
        hi = hi if hi is not None else math.inf
        ret = ret if ret is not None else -math.inf
        flow = flow if flow is not None else 0.0
    events: list[dict[str, Any]] = []
    if s.ret_allow is None:
        above = (s.ret_above_since if s.ret_above_since is not None else t) if ret > hi else None
        s = evolve(s, ret_above_since=above)
        if above is None or t - above < p.return_hold_s or flow <= FLOW_EPS_M3H:
            return s, None, []
        s = evolve(s, ret_allow=flow, ret_ref=flow, ret_since=t, ret_above_since=None)
        events.append(ev(p, "return_limit_engaged", t, ret, hi, flow_m3h=round(flow, 4)))
    elif act:
        s = evolve(s, ret_allow=law.return_allow(p, s, ret, flow))
    below = ret <= hi - p.return_hyst_c
    since = (s.ret_below_since if s.ret_below_since is not None else t) if below else None
    s = evolve(s, ret_below_since=since)
    if since is not None and t - since >= p.return_hold_s:
        events.append(
            ev(
                p,
                "return_limit_released",
                t,
                ret if math.isfinite(ret) else None,
                hi if math.isfinite(hi) else None,
                duration_s=None if s.ret_since is None else round(t - s.ret_since, 3),
            )
        )
        s = evolve(s, ret_allow=None, ret_ref=None, ret_since=None, ret_below_since=None)
        return s, None, events
    assert s.ret_allow is not None
    return s, ("return", s.ret_allow, flow, FLOW_EPS_M3H, s.ret_ref or s.ret_allow), events


def step(p: LimiterParams, s: LimiterState, m: MeterInput) -> tuple[LimiterState, Action]:
    """One reading in, the new state and what to do out. Pure."""
    s, events = _expire(p, s, m.t)
    contract = p
    p = effective(p, s, m.t)
    if p.flow_limit_m3h is None and p.power_limit_kw is None and p.return_max_c is None:
        return s, Action(None, events, False)
    if not _plausible(p, m):
        s, a = _bad_reading(p, s, m)
        return s, evolve(a, events=events + a.events)
    if s.last_t is not None and m.t == s.last_t:
        return s, Action(None, events, s.limiting)  # the same reading again
    t = m.t
    if s.failsafe_since is not None:
        if p.enforce:
            d = t - s.failsafe_since
            events.append(ev(p, "limiter_failsafe_end", t, d, p.stale_s, duration_s=round(d, 3)))
        s = evolve(s, failsafe_since=None)
    s = evolve(s, bad_since=None)
    s, rates, evs = _budget(p, contract, s, m)
    events += evs
    s, fresh = law.observe_meter(s, t, (m.flow_m3h or 0.0, m.power_kw or 0.0))
    s = law.observe_valve(p, s, t, m.position_pct)
    act = law.can_act(p, s, t, fresh)
    s, ret_rate, evs = _return_limit(p, s, m, act)
    events += evs
    if ret_rate is not None:
        rates.append(ret_rate)
    if not p.enforce:
        if s.limiting:  # enforcement switched off while limiting: the watchdog releases
            events.append(
                ev(p, "flow_limit_released", t, None, p.flow_limit_m3h,
                   reason="enforce_off", duration_s=dur(s, t))
            )  # fmt: skip
        s = evolve(s, limiting=False, since=None, open_since=None)
        return s, Action(None, events, False)
    if not rates:
        return s, Action(None, events, s.limiting)
    s, a = _decide(p, s, m, rates, fresh, act)
    return s, evolve(a, events=events + a.events)


def _decide(
    p: LimiterParams, s: LimiterState, m: MeterInput, rates: list[Rate], fresh: bool, act: bool
) -> tuple[LimiterState, Action]:
    """Engage, correct, refresh or release."""
    t, pos = m.t, m.position_pct
    base = (
        pos if pos is not None else (s.applied_pct if s.applied_pct is not None else p.default_pct)
    )
    gain = p.gain if s.limiting else 1.0
    desired = min(law.opening(p, base, a, meas, eps, gain) for _, a, meas, eps, _ in rates)
    desired = law.clamp(desired, p.min_pct, 100.0)
    over = [(n, meas, a, lim) for n, a, meas, _, lim in rates if meas > a * (1.0 + p.engage_margin)]
    within = all(meas <= a for _, a, meas, _, _ in rates)
    events: list[dict[str, Any]] = []
    if not s.limiting:
        if not over:
            return s, Action(None, [], False)
        name, meas, a, lim = over[0]
        write = law.quantise(desired, p.resolution_pct)
        s = _write(evolve(s, limiting=True, since=t, open_since=None), t, write, p, pos)
        events.append(
            ev(p, "flow_limit_enforced", t, meas, lim, by=name, allowed_now=round(a, 4),
               limit_pct=write)
        )  # fmt: skip
        return s, Action(write, events, True)
    if act:
        wide_open = desired >= 100.0 - 1e-9 and within
        s = evolve(
            s, open_since=(s.open_since if s.open_since is not None else t) if wide_open else None
        )
    if s.open_since is not None and t - s.open_since >= p.release_hold_s:
        events.append(
            ev(p, "flow_limit_released", t, rates[0][2], rates[0][4],
               reason="demand_below_limit", duration_s=dur(s, t))
        )  # fmt: skip
        s = evolve(s, limiting=False, since=None, open_since=None)
        s = _write(s, t, p.default_pct, p, pos)
        return s, Action(p.default_pct, events, False)
    since_write = math.inf if s.last_write_t is None else t - s.last_write_t
    if act:
        want = law.quantise(desired, p.resolution_pct)
        moved = s.applied_pct is None or abs(want - s.applied_pct) >= p.deadband_pct - 1e-9
        if moved and since_write >= p.min_write_interval_s:
            return _write(s, t, want, p, pos), Action(want, events, True)
    if since_write >= p.refresh_s and s.applied_pct is not None:
        s = evolve(s, last_write_t=t)
        return s, Action(s.applied_pct, events, True, refresh=True)
    return s, Action(None, events, True)
