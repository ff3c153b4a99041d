"""A slow meter (wired M-Bus at 2400 baud is read every 10-60 s): nothing may assume 1 s
readings. Pure checks of the record rule, the monitors' debounce and offline rules and the
device health rule at such cadences, with the parameters the runner derives from poll_s."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.aggregator import AggState, Sample, close_periods
from agent.config import parse_text
from agent.monitors import MonitorParams, Monitors
from agent.runner import record_params
from drivers.health import OFFLINE_AFTER, OFFLINE_AFTER_S, HealthState, next_health
from drivers.types import Health
from tests.support.configs import GOOD

PARAMS = MonitorParams(
    supply_min_c=65, supply_max_c=120, dp_min_kpa=60, cooling_min_c=25, return_max_c=65,
    outage_supply_c=40, debounce_s=10,
)  # fmt: skip


@pytest.mark.parametrize("poll_s", [10.0, 30.0, 60.0])
def test_records_from_slow_readings_are_exact_and_not_flagged(poll_s: float) -> None:
    cfg = parse_text(GOOD, Path("."))  # period_s 900
    p = record_params(cfg, "hm1", "heat_meter", {}, poll_s)
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 900 + 7.3
    rate = 150.0 / 3600  # kWh/s
    samples = [
        Sample(t, {"energy_kwh": float(math.floor(t * rate)), "volume_m3": 1.0})
        for t in (t0 + k * poll_s for k in range(int(4 * 900 / poll_s)))
    ]
    recs, _ = close_periods(AggState.initial(), samples, p)
    assert len(recs) >= 2
    for r in recs:
        assert "partial" not in r["flags"] and "interpolated" not in r["flags"], r["flags"]
        assert abs(r["energy_kwh"] - 150.0 / 4) <= 2.0  # 1 kWh register, interpolated
    missing = [s for k, s in enumerate(samples) if k % 7 != 3]  # a missed poll now and then
    recs, _ = close_periods(AggState.initial(), missing, p)
    assert any("partial" in r["flags"] or "interpolated" in r["flags"] for r in recs)


@pytest.mark.parametrize("poll_s", [10.0, 60.0])
def test_monitors_debounce_and_offline_at_slow_cadence(poll_s: float) -> None:
    m = Monitors(PARAMS)
    t = 1_700_000_000.0
    events: list[dict[str, object]] = []

    def feed(supply: float | None, ok: bool = True) -> None:
        nonlocal t
        vals: dict[str, float | None] = {"supply_c": supply, "status": 0.0}
        events.extend(m.observe("hm1", "heat_meter", t, vals if ok else {}, ok))
        t += poll_s

    for _ in range(3):
        feed(80.0)
    feed(50.0)  # one low reading: no evidence over time yet
    feed(80.0)
    feed(80.0)
    assert events == []
    feed(50.0)
    feed(50.0)  # two low readings a poll apart (>= debounce): one start
    feed(50.0)
    assert [e["kind"] for e in events] == ["supply_temp_low"]
    feed(80.0)
    feed(80.0)
    assert [e["kind"] for e in events] == ["supply_temp_low", "supply_temp_low_end"]
    events.clear()
    feed(None, ok=False)  # one failed poll of a slow meter is not an outage of the device
    feed(80.0)
    feed(80.0)
    kinds = [e["kind"] for e in events]
    if poll_s >= PARAMS.offline_after_s:
        assert kinds == []
    feed(None, ok=False)
    feed(None, ok=False)
    feed(None, ok=False)
    feed(None, ok=False)
    assert [e["kind"] for e in events].count("device_offline") == 1


@pytest.mark.parametrize("poll_s", [10.0, 60.0])
def test_health_of_a_slow_meter_with_the_runner_window(poll_s: float) -> None:
    window = max(OFFLINE_AFTER_S, OFFLINE_AFTER * poll_s)  # agent.runner: per device
    h = HealthState(Health.OFFLINE, 0, 0.0)
    t = 0.0
    h = next_health(h, True, t)
    t += poll_s
    h = next_health(h, False, t, offline_after_s=window)
    assert h.health is Health.DEGRADED  # one missed poll
    for _ in range(2):
        t += poll_s
        h = next_health(h, False, t, offline_after_s=window)
    assert h.health is Health.OFFLINE
    # without the window a 60 s meter would be offline after one missed poll
    if poll_s > OFFLINE_AFTER_S:
        one = next_health(HealthState(Health.OK, 0, 0.0), False, poll_s + 1)
        assert one.health is Health.OFFLINE
