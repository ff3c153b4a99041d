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
