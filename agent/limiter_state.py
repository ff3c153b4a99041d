"""The limiter's parameters and state: plain frozen data, and the state's JSON form
for the store.

Everything a restart needs to continue the same period's budget is here: the volume and
energy used in the running period with the register value they were counted up to, the
limit last written, whether a limit is in force, the return-temperature limitation and
a timed override. ``to_json``/``from_json`` round-trip it exactly; an unreadable or
foreign document gives ``None`` (the caller starts afresh).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

T = TypeVar("T")


def evolve(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the limiter's frozen dataclasses, which have no
    ``__post_init__`` and take every field in ``__init__``: a copy of the instance's
    ``__dict__`` with the changes. ``replace`` builds keyword arguments for every field
    and runs the frozen ``__init__``: about 10 us for ``LimiterState`` (24 fields) or
    ``LimiterParams`` (45), five of them in each ``limiter.step``, once a second
    (docs/performance.md). A name that is not a field raises TypeError, as with
    ``replace``; an instance without ``__dict__`` (slots) goes through ``replace``."""
    old = getattr(obj, "__dict__", None)
    if old is None:
        return replace(obj, **changes)  # type: ignore[type-var]
    if not old.keys() >= changes.keys():
        unknown = sorted(changes.keys() - old.keys())
        raise TypeError(f"{type(obj).__name__} has no field(s) {unknown}")
    new = object.__new__(type(obj))
    d = new.__dict__
    d.update(old)
    d.update(changes)
    return new


STATE_VERSION = 1


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
    gain: float = 0.7  # correction exponent per correction (1 = full correction)
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
    exceed_tolerance: float = 0.0  # report a period over limit x (1 + this) ...
    volume_resolution_m3: float = 0.001  # ... plus one register step of the meter
    energy_resolution_kwh: float = 0.1
    device: str | None = None  # names the meter in events
    # --- the plant: actuator travel and valve model ---
    stroke_s: float = 0.0  # actuator full-stroke time (travel model); 0 = instant
    characteristic: str = "linear"  # or "equal-percentage"
    rangeability: float = 50.0
    meter_lag_s: float = 0.0  # wait this much beyond a meter refresh after the valve rests
    position_tol_pct: float = 1.0  # reported position this close to the command: at rest
    # --- return-temperature limitation ---
    return_max_c: float | None = None  # None: off
    return_gain: float = 0.05  # per K over the limit, per correction
    return_hold_s: float = 60.0  # above (engage) / below limit - hyst (release) this long
    return_hyst_c: float = 2.0


@dataclass(frozen=True)
class Track:
    """Accounting of one counter (volume or energy) in the current period."""

    period: float | None = None  # start of the period being accounted
    used: float = 0.0  # register units used since the period start
    full: bool = False  # observed from the period start (no long gap)
    reg: float | None = None  # last register value
    reg_t: float | None = None  # when the register last changed (meters refresh slowly)
    reported: float | None = None  # period start whose exceedance was reported


@dataclass(frozen=True)
class Override:
    """A timed lower limit (cmd ``limit_override``)."""

    until: float  # Unix s; in force while t < until
    flow_limit_m3h: float | None = None
    power_limit_kw: float | None = None
    id: str = ""
    since: float = 0.0


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
    # --- slow plants: the actuator's travel and the meter's refresh ---------------------
    settle_t: float | None = None  # the valve is expected at rest from then (travel model)
    rest_since: float | None = None  # the valve was first seen at rest after a command
    last_pos: float | None = None  # reported position at the last reading
    last_meas: tuple[float, float] | None = None  # last (flow, power) values shown
    fresh_t: float | None = None  # when the meter last showed new values
    steady_t: float | None = None  # when an unchanged value last counted as new
    meter_iv: float = 0.0  # the meter's refresh interval, estimated (0: not yet)
    # --- return-temperature limitation ------------------------------------------------
    ret_allow: float | None = None  # allowed flow while the return limit is engaged
    ret_ref: float | None = None  # the flow when it engaged
    ret_above_since: float | None = None
    ret_below_since: float | None = None
    ret_since: float | None = None
    # --- timed override ---------------------------------------------------------------
    override: Override | None = None

    @staticmethod
    def initial() -> LimiterState:
        return LimiterState()


def _ok(k: str, x: Any) -> bool:
    """A field of a saved state: a finite number, a flag, None, the override's id."""
    if isinstance(x, dict):
        return all(_ok(kk, v) for kk, v in x.items())
    if isinstance(x, tuple | list):
        return all(_ok(k, v) for v in x)
    if k == "id":
        return isinstance(x, str)
    if isinstance(x, float):
        return math.isfinite(x)
    return x is None or isinstance(x, int)


def to_json(s: LimiterState) -> str:
    d = asdict(s)
    d["v"] = STATE_VERSION
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


def _build(cls: Any, d: Any) -> Any:
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: not an object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def from_json(text: str | None) -> LimiterState | None:
    """The state saved by ``to_json``; None when absent, unreadable or of another
    version."""
    if not text:
        return None
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") != STATE_VERSION:
            return None
        d.pop("v")
        d["vol"] = _build(Track, d.get("vol", {}))
        d["energy"] = _build(Track, d.get("energy", {}))
        if d.get("override") is not None:
            d["override"] = _build(Override, d["override"])
        if d.get("last_meas") is not None:
            a, b = d["last_meas"]
            d["last_meas"] = (float(a), float(b))
        s: LimiterState = _build(LimiterState, d)
    except (ValueError, TypeError, KeyError):
        return None
    if not all(_ok(k, v) for k, v in asdict(s).items()):
        return None
    return s
