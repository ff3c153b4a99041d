"""Plant physics of the simulator: pure, no I/O."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agent.plausibility_water import heat_coefficient
from simulator.plant import Plant
from simulator.scenarios import get_scenario, scenario_names

T0 = 1_700_000_000.0  # 2023-11-14 22:13 UTC


def test_scenarios_exist() -> None:
    assert {"steady", "winter-peak", "faults", "outage", "low-dp"} <= set(scenario_names())
    with pytest.raises(ValueError):
        get_scenario("nope")


def test_steady_operating_point() -> None:
    p = Plant("steady", seed=3, t0=T0)
    flows = []
    for _ in range(600):
        p.step(1.0)
        flows.append(p.flow_m3h)
        assert p.flow_m3h == pytest.approx(p.demand_flow_m3h)  # unthrottled
        cooling = p.supply_c - p.return_c
        k = heat_coefficient(p.supply_c, p.return_c)
        assert p.power_kw == pytest.approx(p.flow_m3h * k * cooling / 3600.0)
        assert 60.0 < p.dp_kpa < 130.0
        assert 70.0 <= p.supply_c <= 120.0
    avg = sum(flows) / len(flows)
    assert 0.9 < avg < 1.6


def test_throttling_lowers_flow_raises_cooling_and_delivers_less() -> None:
    free = Plant("winter-peak", seed=1, t0=T0)
    thr = Plant("winter-peak", seed=1, t0=T0)
    free.step(10.0)
    thr.step(10.0)
    thr.write_limit(20.0)
    assert thr.flow_m3h < free.flow_m3h
    assert thr.flow_m3h == pytest.approx(thr.capacity_m3h * 0.20)
    assert thr.demand_flow_m3h == pytest.approx(free.demand_flow_m3h)
    assert thr.supply_c == free.supply_c
    assert thr.return_c < free.return_c  # more cooling
    assert thr.power_kw < free.power_kw  # but less heat than demanded
    assert thr.power_kw < thr.demand_kw
    assert free.power_kw == pytest.approx(free.demand_kw)
    # truth flow is the delivered flow
    assert thr.truth()["flow_m3h"] == thr.flow_m3h
    # fully closed: nothing flows, nothing is delivered
    thr.write_limit(0.0)
    assert thr.flow_m3h == 0.0 and thr.power_kw == 0.0
    e = thr.energy_kwh
    thr.step(5.0)
    assert thr.energy_kwh == e


def test_integrals_follow_flow_and_power() -> None:
    p = Plant("steady", seed=5, t0=T0)
    e0, v0 = p.energy_kwh, p.volume_m3
    exp_e = exp_v = 0.0
    for _ in range(3600):
        exp_e += p.power_kw / 3600.0
        exp_v += p.flow_m3h / 3600.0
        p.step(1.0)
    assert p.energy_kwh - e0 == pytest.approx(exp_e, rel=1e-9)
    assert p.volume_m3 - v0 == pytest.approx(exp_v, rel=1e-9)
    assert p.delivered_energy_kwh == pytest.approx(exp_e, rel=1e-9)
    assert 30.0 < exp_e < 100.0  # about an hour at ~55 kW


def test_determinism_under_seed() -> None:
    def run(seed: int) -> list[dict[str, float]]:
        p = Plant("winter-peak", seed=seed, t0=T0)
        out = []
        for i in range(900):
            p.step(1.0)
            if i == 300:
                p.write_limit(40.0)
            out.append(p.truth())
        return out

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c


def test_values_do_not_depend_on_step_size() -> None:
    a = Plant("steady", seed=2, t0=T0)
    b = Plant("steady", seed=2, t0=T0)
    a.step(100.0)
    for _ in range(1000):
        b.step(0.1)
    assert a.t == pytest.approx(b.t)
    for k in ("supply_c", "dp_kpa", "demand_flow_m3h", "outdoor_c"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-5), k


def test_watchdog_releases_limit() -> None:
    p = Plant("steady", seed=0, t0=T0)
    p.set_watchdog(10.0)
    p.write_limit(5.0)
    assert p.valve_limit_pct == 5.0 and p.limit_active
    for _ in range(8):
        p.step(1.0)
    p.write_limit(5.0)  # refresh
    for _ in range(10):
        p.step(1.0)
    assert p.valve_limit_pct == 5.0 and p.limit_active  # exactly 10 s: still in force
    p.step(1.0)
    assert p.valve_limit_pct == 100.0 and not p.limit_active
    assert p.flow_m3h == pytest.approx(p.demand_flow_m3h)
    assert any(kind == "watchdog_release" for _, kind in p.events)


def test_winter_peak_demand_range_over_a_day() -> None:
    p = Plant("winter-peak", seed=11, t0=T0)
    contract = 2.5
    inside = 0
    n = 86_400
    for _ in range(n):
        p.step(1.0)
        if 1.5 * contract <= p.demand_flow_m3h <= 2.5 * contract:
            inside += 1
    assert inside / n >= 0.97


def test_outage_supply_collapses_and_recovers() -> None:
    params = replace(get_scenario("outage"), outage_after_s=20.0, outage_duration_s=30.0)
    p = Plant(params=params, seed=0, t0=T0)
    sup = []
    for _ in range(80):
        p.step(1.0)
        sup.append(p.supply_c)
    assert min(sup[:19]) > 65.0
    assert max(sup[30:48]) < 45.0  # collapsed
    assert min(sup[60:]) > 65.0  # recovered
    assert Plant("outage", seed=0, t0=T0).params.outage_after_s == 20.0


def test_low_dp_below_general_terms() -> None:
    p = Plant("low-dp", seed=0, t0=T0)
    dps = []
    for _ in range(600):
        p.step(1.0)
        dps.append(p.dp_kpa)
    assert max(dps) < 60.0 and min(dps) > 20.0


def test_counter_reset_and_rollover() -> None:
    p = Plant("faults", seed=0, t0=T0)
    p.step(44.0)
    assert p.energy_kwh > 1000.0
    p.step(2.0)
    assert p.energy_kwh < 0.1
    assert p.faults["counter_reset"] == 1
    p.step(100.0)
    assert p.faults["counter_reset"] == 1
    params = replace(get_scenario("steady"), energy0_kwh=9_999_999.99, volume0_m3=99_999.9995)
    q = Plant(params=params, t0=T0)
    q.step(60.0)
    assert q.energy_kwh < 5.0
    assert q.volume_m3 < 0.1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_step_rejects_bad_dt(bad: float) -> None:
    with pytest.raises(ValueError):
        Plant().step(bad)


# --- real hardware: actuator travel, valve characteristic, meter refresh, return floor ---


def test_default_scenarios_keep_the_instant_actuator_and_the_live_meter() -> None:
    for name in ("steady", "winter-peak", "faults", "outage", "low-dp"):
        p = get_scenario(name)
        assert p.stroke_s == 0.0 and p.meter_update_s == 0.0 and p.meter_lag_s == 0.0
        assert p.valve_characteristic == "linear"
    pl = Plant("winter-peak", seed=1, t0=T0)
    pl.step(5.0)
    pl.write_limit(30.0)
    assert pl.flow_m3h == pytest.approx(pl.capacity_m3h * 0.30)
    assert pl.meter.shown["flow_m3h"] == pl.flow_m3h  # shown at once
    assert pl.position_pct == pytest.approx(30.0)


def test_actuator_travels_at_its_stroke_speed_and_reports_its_position() -> None:
    sc = replace(get_scenario("winter-peak"), stroke_s=90.0)
    pl = Plant("winter-peak", seed=1, t0=T0, params=sc)
    pl.step(5.0)
    start = pl.position_pct  # where the building's own demand holds the valve
    assert 40.0 < start < 70.0
    pl.write_limit(start - 18.0)  # 18 % of stroke: 16.2 s
    assert pl.valve_limit_pct == pytest.approx(start - 18.0)  # the register at once
    pl.step(8.0)
    assert pl.position_pct == pytest.approx(start - 8.0 * 100 / 90, abs=0.2)  # half way
    assert pl.actuator.moving
    pl.step(9.0)
    assert pl.position_pct == pytest.approx(start - 18.0, abs=0.01)
    assert not pl.actuator.moving
    assert pl.truth()["stroke_limit_pct"] == pytest.approx(start - 18.0)


def test_actuator_deadband_ignores_small_commands() -> None:
    sc = replace(get_scenario("winter-peak"), stroke_s=90.0, deadband_pct=0.5, watchdog_s=600.0)
    pl = Plant("winter-peak", seed=1, t0=T0, params=sc)
    pl.write_limit(40.0)
    pl.step(80.0)
    assert pl.position_pct == pytest.approx(40.0)
    pl.write_limit(40.4)  # inside the deadband: stays
    pl.step(5.0)
    assert pl.position_pct == pytest.approx(40.0)
    pl.write_limit(41.0)  # outside: moves
    pl.step(5.0)
    assert pl.position_pct == pytest.approx(41.0)


def test_equal_percentage_valve() -> None:
    sc = replace(get_scenario("winter-peak"), valve_characteristic="equal-percentage")
    pl = Plant("winter-peak", seed=1, t0=T0, params=sc)
    pl.step(1.0)
    pl.write_limit(50.0)
    # half the stroke passes 50 ** -0.5 of the capacity
    assert pl.flow_m3h == pytest.approx(pl.capacity_m3h * 50**-0.5)
    assert pl.position_pct == pytest.approx(50.0)
    pl.write_limit(0.0)
    assert pl.flow_m3h == 0.0
    v = pl.valve
    for s in (1.0, 2.0, 10.0, 60.0, 100.0):
        assert v.stroke(v.fraction(s)) == pytest.approx(s)


def test_meter_refreshes_every_update_s_with_a_lag() -> None:
    sc = replace(get_scenario("winter-peak"), meter_update_s=10.0, meter_lag_s=5.0)
    pl = Plant("winter-peak", seed=1, t0=T0, params=sc)
    shown = []
    for _ in range(40):
        pl.step(1.0)
        shown.append((pl.meter.shown["flow_m3h"], pl.meter.shown["volume_m3"]))
    # constant within each 10 s cycle, new at each
    changes = [i for i in range(1, 40) if shown[i] != shown[i - 1]]
    assert changes == [9, 19, 29, 39], changes
    # the lag: after a step in the true flow, the shown one follows with tau = 5 s
    pl.write_limit(20.0)
    true = pl.flow_m3h
    before = pl.meter.shown["flow_m3h"]
    pl.step(10.0)
    f = pl.meter.shown["flow_m3h"]
    frac = (before - f) / (before - true)
    assert 0.8 < frac < 0.9, frac  # about 1 - exp(-10 / 5) = 0.86 of the way


def test_return_never_below_the_buildings_own_return() -> None:
    pl = Plant("winter-peak", seed=1, t0=T0)
    pl.step(1.0)
    pl.write_limit(5.0)  # heavily throttled
    floor = 25.0 + 0.2 * (20.0 - pl.outdoor_c)
    assert pl.return_c >= floor - 1e-9
    assert 30.0 < floor < 40.0  # about -24 C outdoor
    st = Plant("steady", seed=1, t0=T0)
    st.write_limit(1.0)
    assert 25.0 <= st.return_c < st.supply_c


def test_slow_scenarios_and_return_high() -> None:
    s = get_scenario("winter-peak-slow")
    assert (s.stroke_s, s.meter_update_s, s.valve_characteristic) == (
        90.0,
        10.0,
        "equal-percentage",
    )
    s2 = get_scenario("winter-peak-slower")
    assert (s2.stroke_s, s2.meter_update_s) == (180.0, 60.0)
    pl = Plant("return-high", seed=1, t0=T0)
    pl.step(30.0)
    low = pl.return_c
    pl.step(60.0)
    assert pl.return_c > low + 10.0
    pl.step(400.0)
    assert pl.return_c == pytest.approx(low, abs=2.0)


def test_dh_sim_options_select_the_hardware() -> None:
    from simulator.cli import _overrides, build_parser

    argv = "--scenario steady --stroke-s 120 --deadband-pct 0.5 --valve equal-percentage"
    args = build_parser().parse_args(
        [*argv.split(), "--meter-update-s", "30", "--meter-lag-s", "4"]
    )
    p = get_scenario(args.scenario, **_overrides(args))
    assert (p.stroke_s, p.deadband_pct, p.valve_characteristic) == (120.0, 0.5, "equal-percentage")
    assert (p.meter_update_s, p.meter_lag_s) == (30.0, 4.0)
    plain = build_parser().parse_args(["--scenario", "steady"])
    assert _overrides(plain) == {}
