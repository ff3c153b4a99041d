"""The limiter's control law (pure arithmetic; ``agent.limiter`` sequences it).

* ``account``: the volume (or energy) used in the running period, from the meter's
  register, split at the period boundary.
* ``allowed_rate``: the flow (or power) allowed for the rest of the period.
* ``opening``: the opening that should pass the allowed flow, from where the valve
  actually is (the actuator's reported position) and what flows there, through a model
  of the valve's characteristic.
* ``at_rest`` / ``travel_s``: the actuator's travel model. The law acts only on a meter
  value measured entirely after the valve came to rest, so it never winds up while the
  valve is still moving or the meter still shows the old flow.
* ``return_allow``: the flow allowed by the return-temperature limitation.
"""

from __future__ import annotations

import math

from agent.limiter_events import Closed
from agent.limiter_state import LimiterParams, LimiterState, Track, evolve

RATIO_MAX = 4.0


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def quantise(pct: float, res: float) -> float:
    q = round(pct / res) * res if res > 0 else pct
    return round(clamp(q, 0.0, 100.0), 6)


def account(
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
) -> tuple[Track, list[Closed]]:
    """Advance one counter's period accounting to the reading (t, reg). A saved state
    restored after a restart continues here: the register counted through the downtime,
    so the volume used is exact; only its split at a boundary crossed while down is
    linear."""
    ps = math.floor(t / period_s) * period_s
    rate = max(rate_per_h, 0.0)
    if tr.period is None or tr.reg is None or last_t is None or t <= last_t:
        # first reading (or after a clock step back): assume the current rate since the
        # period start; the period counts as observed only if that is about now
        used = rate * (t - ps) / 3600.0
        full = t - ps <= min(gap_s, 0.05 * period_s)
        return evolve(tr, period=ps, used=used, full=full, reg=reg, reg_t=t), []
    # a meter refreshes its registers every 10-60 s: a step covers the time since the
    # register last changed, not since the last reading
    since = tr.reg_t if tr.reg_t is not None and tr.reg_t < t else last_t
    dt = t - since
    d = reg - tr.reg
    if d < 0 and rollover:
        d += rollover
    if d < 0 or d > max_rate_per_h * dt / 3600.0 + slack:
        d = rate * dt / 3600.0  # counter reset or absurd jump: re-anchor, estimate
    closed: list[Closed] = []
    period, used, full = tr.period, tr.used, tr.full
    if t >= period + period_s:
        end = period + period_s
        f = clamp((end - since) / dt, 0.0, 1.0)
        closed.append(Closed(period, used + d * f, full and t - last_t <= gap_s))
        period = ps
        used = d * clamp((t - ps) / dt, 0.0, 1.0)
        full = t - last_t <= gap_s
    else:
        used += d
    reg_t = t if reg != tr.reg else since
    return evolve(tr, period=period, used=used, full=full, reg=reg, reg_t=reg_t), closed


def response_s(p: LimiterParams, s: LimiterState) -> float:
    """How long one correction takes to show: about half a stroke plus two meter
    refreshes (the refresh the valve moved in, and a clean one)."""
    return 0.5 * p.stroke_s + 2.0 * max(s.meter_iv, 1.0) + p.meter_lag_s


def allowed_rate(
    limit: float, used: float, period: float, p: LimiterParams, s: LimiterState, t: float
) -> float:
    """The rate (per hour) allowed for the rest of the period: the target rate plus the
    deviation from the on-target budget, corrected over the time left (at least the
    horizon, itself at least the plant's response time, so the last seconds of a period
    neither amplify register noise nor ask for a move the valve cannot finish)."""
    ps = float(p.period_s)
    aim = p.target * limit
    left = clamp(period + ps - t, 0.0, ps)
    deviation = (aim * ps - aim * left) / 3600.0 - used  # > 0: under budget so far
    horizon = max(min(p.horizon_s, p.horizon_frac * ps), min(response_s(p, s), 0.5 * ps), 1e-9)
    q = aim + deviation * 3600.0 / max(left, horizon)
    return clamp(q, p.min_flow_factor * limit, p.inst_cap_factor * limit)


def opening(
    p: LimiterParams, base: float, allowed: float, measured: float, eps: float, gain: float
) -> float:
    """The opening that passes ``allowed`` where ``base`` passes ``measured``, by the
    valve model: linear (opening proportional to flow) or equal-percentage (each % of
    stroke multiplies the flow by ``rangeability ** 0.01``)."""
    if measured <= eps:
        return 100.0  # nothing flows: nothing to limit
    r = clamp(allowed / measured, 1.0 / RATIO_MAX, RATIO_MAX)
    if p.characteristic == "equal-percentage":
        return base + gain * 100.0 * math.log(r) / math.log(p.rangeability)
    return base * math.pow(r, gain)


def travel_s(p: LimiterParams, frm: float, to: float) -> float:
    return abs(to - frm) * p.stroke_s / 100.0


def observe_valve(p: LimiterParams, s: LimiterState, t: float, pos: float | None) -> LimiterState:
    """Track when the valve comes to rest after a command: at the command by its reported
    position, or when the travel model says it arrived and the position stopped moving."""
    if s.rest_since is not None:
        return evolve(s, last_pos=pos)
    cmd = s.applied_pct
    arrived = s.settle_t is None or t >= s.settle_t
    if pos is not None and cmd is not None and abs(pos - cmd) <= p.position_tol_pct:
        arrived = True
    elif pos is not None and s.last_pos is not None and abs(pos - s.last_pos) > 0.05:
        arrived = False  # still moving, whatever the model says
    return evolve(s, last_pos=pos, rest_since=t if arrived else None)


def observe_meter(
    s: LimiterState, t: float, meas: tuple[float, float]
) -> tuple[LimiterState, bool]:
    """Whether the meter shows a new measurement, and its refresh interval (estimated
    from the changes of its values). A value unchanged for two refresh intervals (or two
    minutes while the interval is unknown) counts as a new one: a steady flow."""
    if s.last_meas == meas:
        ref = max(s.fresh_t or -math.inf, s.steady_t or -math.inf)
        wait = 2.0 * s.meter_iv + 1.0 if s.meter_iv > 0 else 120.0
        if math.isfinite(ref) and t - ref >= wait:
            return evolve(s, steady_t=t), True
        return s, False
    iv = s.meter_iv
    if s.fresh_t is not None and t > s.fresh_t:
        d = t - s.fresh_t
        iv = d if iv <= 0 else clamp(0.7 * iv + 0.3 * d, 0.5, 300.0)
    return evolve(s, last_meas=meas, fresh_t=t, steady_t=None, meter_iv=iv), True


def can_act(p: LimiterParams, s: LimiterState, t: float, fresh: bool) -> bool:
    """A correction is due: a fresh meter value that was measured with the valve at rest
    (a whole refresh interval plus the meter's lag after it came to rest)."""
    if not fresh or s.rest_since is None:
        return False
    # rest is seen at the first reading after it (about one poll late)
    return t - s.rest_since >= max(s.meter_iv - 1.0, 0.0) + p.meter_lag_s - 1e-9


def return_allow(p: LimiterParams, s: LimiterState, ret: float, flow: float) -> float:
    """One step of the return limitation: the allowed flow shrinks while the return is
    above ``return_max_c`` and grows back below it (multiplicative, per correction)."""
    assert p.return_max_c is not None and s.ret_allow is not None and s.ret_ref is not None
    k = math.exp(-p.return_gain * (ret - p.return_max_c))
    q = min(s.ret_allow, max(flow, 1e-6) * 1.5) * k
    return clamp(q, 0.1 * s.ret_ref, 2.0 * s.ret_ref)
