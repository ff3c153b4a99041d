"""Plausibility checks and water properties: pure unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from agent.plausibility import Plausibility, PlausibilityParams
from agent.plausibility_water import heat_coefficient, heat_kwh, if97_v_h, water_table

T0 = 1_705_276_800.0


def test_if97_region1_matches_the_releases_check_values() -> None:
    # IAPWS-IF97 release, table 5 (region 1 verification values)
    for t_k, p, v, h in (
        (300.0, 3.0, 0.100215168e-2, 0.115331273e3),
        (300.0, 80.0, 0.971180894e-3, 0.184142828e3),
        (500.0, 3.0, 0.120241800e-2, 0.975542239e3),
    ):
        vv, hh = if97_v_h(t_k, p)
        assert vv == pytest.approx(v, rel=1e-8)
        assert hh == pytest.approx(h, rel=1e-8)


def test_table_and_heat_coefficient() -> None:
    w = water_table()
    for t in (4.0, 40.0, 70.3, 115.0):
        v, h = if97_v_h(t + 273.15, 1.0)
        assert w.density(t) == pytest.approx(1 / v, rel=1e-6)
        assert w.enthalpy(t) == pytest.approx(h, rel=1e-5)
    assert 999.5 < w.density(4.0) < 1000.5
    # k in the return pipe: rho(return) * mean cp, about 4.15 MJ/(m3 K) at 70/40
    assert heat_coefficient(70.0, 40.0) == pytest.approx(4149, rel=2e-3)
    assert heat_coefficient(70.0, 40.0, "supply") < heat_coefficient(70.0, 40.0)
    assert heat_coefficient(60.0, 60.0) == pytest.approx(983.2 * 4.185, rel=2e-3)
    # DOMAIN.md: 2.5 m3/h cooled by 40 K is about 114 kW
    assert heat_kwh(2.5, 80.0, 40.0) == pytest.approx(115.0, rel=0.02)


class Meter:
    """A meter on the bench: registers integrated from flow and temperatures."""

    def __init__(self, check: Plausibility | None = None, factor: float = 1.0) -> None:
        self.check = check or Plausibility(PlausibilityParams())
        self.t, self.e, self.v = T0, 50_000.0, 3_000.0
        self.factor = factor
        self.events: list[dict[str, Any]] = []

    def run(self, seconds: int, every: int = 10, flow: float = 1.2, sup: float = 75.0,
            ret: float = 42.0, **over: float) -> list[dict[str, Any]]:  # fmt: skip
        out: list[dict[str, Any]] = []
        for i in range(0, seconds, every):
            f = flow * (1 + 0.1 * ((i // every) % 7) / 7) if "flow_m3h" not in over else flow
            s = sup + 0.5 * ((i // 60) % 5)
            self.v += f * every / 3600
            self.e += max(0.0, heat_kwh(f * every / 3600, s, ret) * self.factor)
            vals = {"energy_kwh": round(self.e, 1), "volume_m3": round(self.v, 3),
                    "flow_m3h": f, "power_kw": f * 40, "supply_c": s, "return_c": ret,
                    "status": 0.0}  # fmt: skip
            vals.update(over)
            if "power_kw" not in over:
                vals["power_kw"] = f * 4.15 * (s - ret)
            out += self.check.observe("hm1", self.t, vals, (), {"energy_kwh": 1e7})
            self.t += every
        self.events += out
        return out


def test_healthy_meter_no_event_and_judged() -> None:
    m = Meter()
    assert m.run(2 * 86400) == []
    devs = m.check.judged["hm1"]
    assert len(devs) >= 24 and max(abs(d) for d in devs) < 0.1


def test_drift_above_threshold_starts_and_ends() -> None:
    m = Meter(factor=1.07)
    evs = m.run(2 * 86400)
    assert [e["kind"] for e in evs] == ["meter_drift_suspected"]
    assert evs[0]["deviation_pct"] == pytest.approx(7.0, abs=0.1)
    assert evs[0]["meter_energy_kwh"] == pytest.approx(
        1.07 * evs[0]["implied_energy_kwh"], rel=1e-3
    )
    m.factor = 1.0
    evs = m.run(2 * 86400)
    assert [e["kind"] for e in evs] == ["meter_drift_end"]


def test_drift_below_threshold_and_configurable_threshold() -> None:
    assert Meter(factor=1.03).run(2 * 86400) == []
    strict = Plausibility(PlausibilityParams(drift_pct=2.0))
    assert [e["kind"] for e in Meter(strict, factor=0.97).run(2 * 86400)] == [
        "meter_drift_suspected"
    ]


def test_swapped_sensors_need_flow_and_time() -> None:
    m = Meter()
    assert m.run(3600, sup=42.0, ret=75.0, flow_m3h=0.0, flow=0.0) == []  # no flow
    evs = m.run(1200, sup=42.0, ret=75.0)
    assert [e["kind"] for e in evs] == ["temp_sensors_swapped"]
    assert evs[0]["return_c"] == 75.0 and evs[0]["threshold"] == 1.0
    evs = m.run(600)
    assert [e["kind"] for e in evs] == ["temp_sensors_swapped_end"]


def test_sensor_faults_shorted_and_open_not_a_glitch() -> None:
    m = Meter()
    assert m.run(30, supply_c=185.0) == []  # one short glitch
    assert m.run(600) == []
    evs = m.run(120, return_c=0.0)
    assert [(e["kind"], e["sensor"], e["reading"]) for e in evs] == [
        ("temp_sensor_fault", "return", "shorted")
    ]
    evs = m.run(400)
    assert [e["kind"] for e in evs] == ["temp_sensor_fault_end"]
    evs = m.run(120, supply_c=185.0)
    assert [(e["kind"], e["reading"], e["value"]) for e in evs] == [
        ("temp_sensor_fault", "open", 185.0)
    ]


def test_stuck_flow_only_while_power_moves() -> None:
    m = Meter()
    # constant flow and constant power: a quiet plant, not proof of a stuck sensor
    assert m.run(4 * 3600, flow=1.3, flow_m3h=1.3, power_kw=50.0, sup=75.0) == []
    evs = m.run(3 * 3600, flow=1.3, flow_m3h=1.3)
    assert [e["kind"] for e in evs] == ["flow_sensor_stuck"]
    assert evs[0]["value"] == 1.3 and evs[0]["duration_s"] >= 7200
    evs = m.run(60)
    assert [e["kind"] for e in evs] == ["flow_sensor_stuck_end"]


def test_register_decrease_but_not_rollover() -> None:
    c = Plausibility(PlausibilityParams())
    base = {"flow_m3h": 1.0, "supply_c": 70.0, "return_c": 40.0, "status": 0.0, "serial": 1}
    assert c.observe("hm1", T0, {**base, "energy_kwh": 9_999_999.9, "volume_m3": 10.0}) == []
    ro = {"energy_kwh": 10_000_000.0}
    assert c.observe("hm1", T0 + 1, {**base, "energy_kwh": 0.1, "volume_m3": 10.0}, (), ro) == []
    evs = c.observe("hm1", T0 + 2, {**base, "energy_kwh": 0.1, "volume_m3": 9.5}, (), ro)
    assert [(e["kind"], e["register"], e["before"], e["value"]) for e in evs] == [
        ("meter_register_decrease", "volume_m3", 10.0, 9.5)
    ]
    # a replaced meter (new serial) starts a new series: no decrease
    evs = c.observe("hm1", T0 + 3, {**base, "energy_kwh": 0.0, "volume_m3": 0.0, "serial": 2})
    assert evs == []


def test_disabled() -> None:
    c = Plausibility(PlausibilityParams(enabled=False))
    assert c.observe("hm1", T0, {"supply_c": 185.0}) == []
