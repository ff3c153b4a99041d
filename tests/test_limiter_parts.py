"""The limiter's pure parts: state persistence form, overrides, exceedance with the
meter's resolution, slow meters' registers, the valve model."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import limiter_law as law
from agent import limiter_override as ov
from agent import limiter_store
from agent.limiter import LimiterParams, LimiterState, MeterInput, Override, Track, step
from agent.limiter_state import from_json, to_json
from agent.store import Store

T0 = 1_705_276_800.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def p_(**kw: object) -> LimiterParams:
    base = LimiterParams(
        flow_limit_m3h=2.5, power_limit_kw=None, period_s=10, enforce=True, refresh_s=20.0
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_state_round_trips_through_json_and_the_store(tmp_path: Path) -> None:
    s = LimiterState(
        last_t=T0 + 5.5,
        vol=Track(period=T0, used=0.0123, full=True, reg=1234.567, reg_t=T0 + 5, reported=None),
        applied_pct=61.3,
        limiting=True,
        since=T0,
        last_meas=(2.5, 40.0),
        meter_iv=10.0,
        ret_allow=1.7,
        ret_ref=2.0,
        override=Override(until=T0 + 3600, flow_limit_m3h=1.5, id="x", since=T0),
    )
    assert from_json(to_json(s)) == s
    with Store(tmp_path / "a.db") as st:
        assert limiter_store.load(st) is None
        limiter_store.save(st, s)
    with Store(tmp_path / "a.db") as st:  # another process would see the same
        assert limiter_store.load(st) == s
        lines = limiter_store.status_lines(st, T0 + 10)
    assert "limiter: limiting, actuator limit 61.3 %" in lines
    assert any(x.startswith("limit override: flow_limit_m3h 1.5 until") for x in lines), lines
    assert any("return-temperature limitation: engaged" in x for x in lines)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "{",
        "[]",
        '{"v": 99}',
        '{"v": 1, "vol": 3}',
        '{"v": 1, "last_t": "x"}',
        '{"v": 1, "vol": {"used": "x"}}',
        '{"v": 1, "override": {"flow_limit_m3h": 1}}',
        '{"v": 1, "last_meas": [1]}',
    ],
)
def test_unreadable_state_starts_afresh(text: str | None) -> None:
    assert from_json(text) is None


def test_override_parse_and_admit() -> None:
    now = T0
    body = {"cmd": "limit_override", "id": "a", "flow_limit_m3h": 1.8, "until": iso(now + 7200)}
    o, why = ov.parse(body, now)
    assert why == "" and o is not None
    assert o.flow_limit_m3h == 1.8 and o.until == now + 7200 and o.power_limit_kw is None
    assert ov.admit(o, 2.5, None) == ""
    assert ov.admit(o, None, 40.0) == ""  # no flow limit in the contract: any lowers
    assert ov.admit(o, 1.8, None).startswith("invalid: flow_limit_m3h: must be below")
    o2, _ = ov.parse({**body, "flow_limit_m3h": 3.0}, now)
    assert o2 is not None and ov.admit(o2, 2.5, None).startswith("invalid: flow_limit_m3h")
    bad = [
        ({**body, "until": iso(now + 24 * 3600 + 1)}, "invalid: until: at most 24 h ahead"),
        ({**body, "until": iso(now - 1)}, "invalid: until: must be in the future"),
        ({**body, "until": "tomorrow"}, "invalid: until: must be an RFC 3339"),
        ({**body, "until": "2024-01-15T10:00:00"}, "invalid: until: must be an RFC 3339"),
        ({**body, "flow_limit_m3h": -1}, "invalid: flow_limit_m3h: must be a positive"),
        ({**body, "flow_limit_m3h": True}, "invalid: flow_limit_m3h: must be a positive"),
        ({**body, "flow_limit_m3h": math.nan}, "invalid: flow_limit_m3h: must be a positive"),
        ({**body, "power_limit_kw": 30}, "invalid: limit_override: exactly one"),
        ({k: v for k, v in body.items() if k != "flow_limit_m3h"}, "invalid: limit_override"),
        ({**body, "extra": 1}, "invalid: extra: unknown key"),
    ]
    for b, reason in bad:
        o3, why3 = ov.parse(b, now)
        assert o3 is None and why3.startswith(reason), (b, why3)
    pw, _ = ov.parse({"cmd": "limit_override", "power_limit_kw": 30, "until": iso(now + 60)}, now)
    assert pw is not None and pw.power_limit_kw == 30.0
    assert ov.admit(pw, 2.5, 30.0).startswith("invalid: power_limit_kw")
    view = ov.view(o, now)
    assert view == {"id": "a", "since": iso(now), "until": iso(now + 7200), "flow_limit_m3h": 1.8}
    assert ov.view(o, now + 7200) is None


def _feed(p: LimiterParams, vols: list[tuple[float, float]], flow: float) -> list[str]:
    s = LimiterState.initial()
    kinds: list[str] = []
    for t, v in vols:
        s, a = step(p, s, MeterInput(t, v, 0.0, flow, 0.0, True))
        kinds += [e["kind"] for e in a.events]
    return kinds


def test_a_period_over_by_less_than_one_register_step_is_not_an_exceedance() -> None:
    """The demo's case: a 10 s period at 2.5 m3/h allows 6.94 litres; the litre register
    showing 7 is within one step and must not report ``flow_limit_exceeded``; 9 does."""
    p = p_(enforce=False)
    ok = [(T0 + i, 100.0 + 0.7 * i / 1000) for i in range(0, 11)]  # 7 litres
    ok += [(T0 + 10 + i, 100.007 + 0.0007 * i) for i in range(1, 11)]
    assert "flow_limit_exceeded" not in _feed(p, ok, 2.5)
    over = [(T0 + i, 100.0 + 0.9 * i / 1000) for i in range(0, 11)]  # 9 litres
    over += [(T0 + 10 + i, 100.009 + 0.0007 * i) for i in range(1, 11)]
    assert "flow_limit_exceeded" in _feed(p, over, 2.5)


def test_held_registers_of_a_slow_meter_count_in_full() -> None:
    """A meter refreshing every 60 s steps its volume register by a minute's volume:
    that is not an absurd jump to be replaced by an estimate."""
    tr = Track()
    tr, _ = law.account(tr, 3600.0, T0 + 1, None, 10.0, 2.5, None, 25.0, 0.01, 30.0)
    for i in range(2, 61):  # held
        tr, _ = law.account(tr, 3600.0, T0 + i, T0 + i - 1, 10.0, 2.5, None, 25.0, 0.01, 30.0)
    tr, _ = law.account(tr, 3600.0, T0 + 61, T0 + 60, 10.0417, 2.5, None, 25.0, 0.01, 30.0)
    assert tr.used == pytest.approx(2.5 / 3600 + 0.0417, abs=1e-6)
    assert tr.reg_t == T0 + 61


def test_meter_refresh_interval_is_estimated() -> None:
    s = LimiterState.initial()
    fresh_at = []
    for i in range(200):
        t = T0 + i
        meas = (2.0 + 0.01 * (i // 20), 0.0)  # a new value every 20 s
        s, fresh = law.observe_meter(s, t, meas)
        if fresh:
            fresh_at.append(i)
    assert fresh_at[:3] == [0, 20, 40]
    assert s.meter_iv == pytest.approx(20.0)


def test_valve_model_openings() -> None:
    lin, eq = p_(), p_(characteristic="equal-percentage", rangeability=50.0)
    assert law.opening(lin, 80.0, 2.0, 4.0, 1e-6, 1.0) == pytest.approx(40.0)
    # equal-percentage: halving the flow is ln(2)/ln(50) of the stroke
    assert law.opening(eq, 80.0, 2.0, 4.0, 1e-6, 1.0) == pytest.approx(80 - 17.72, abs=0.01)
    assert law.opening(eq, 80.0, 2.0, 0.0, 1e-6, 1.0) == 100.0
    assert law.travel_s(p_(stroke_s=90.0), 100.0, 50.0) == pytest.approx(45.0)


def test_no_new_command_until_the_valve_rests_and_the_meter_refreshed() -> None:
    """Position feedback: while the reported position travels toward the command, the
    law holds its command however far the flow is from the allowance."""
    p = p_(period_s=3600, stroke_s=90.0, characteristic="equal-percentage")
    s = LimiterState.initial()
    s, a = step(p, s, MeterInput(T0 + 1, 100.0, 0.0, 5.0, 0.0, True, position_pct=85.0))
    assert a.write_pct is not None and a.write_pct < 85.0
    cmd = a.write_pct
    writes = []
    pos = 85.0
    for i in range(2, 40):
        pos = max(cmd, pos - 100.0 / 90.0)
        flow = 5.0 - 0.02 * i  # the meter still shows a lot
        s, a = step(
            p, s, MeterInput(T0 + i, 100.0 + 0.001 * i, 0.0, flow, 0.0, True, position_pct=pos)
        )
        if a.write_pct is not None and not a.refresh:
            writes.append((i, pos, a.write_pct))
    assert all(w[1] <= cmd + p.position_tol_pct for w in writes), writes
    assert writes, "the law corrected once the valve was at rest"
