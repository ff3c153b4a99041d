"""Contract advice (pure): the largest complete hour of the last 12 months."""

from __future__ import annotations

from typing import Any

from agent.advice import YEAR_S, contract_review, describe, hourly
from agent.timefmt import rfc3339

H0 = 1_700_006_400.0  # a whole hour


def rec(
    start: float, period: int, m3: float, kwh: float, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "device": "hm1",
        "role": "heat_meter",
        "start": rfc3339(start),
        "end": rfc3339(start + period),
        "period_s": period,
        "volume_m3": m3,
        "energy_kwh": kwh,
        "flags": list(flags),
    }


def test_short_periods_sum_into_complete_hours_only() -> None:
    recs = [rec(H0 + k * 900, 900, 0.5, 20.0) for k in range(4)]  # one complete hour: 2 m3
    recs += [rec(H0 + 3600 + k * 900, 900, 5.0, 200.0) for k in range(3)]  # incomplete
    h = hourly(recs)
    assert h == {H0: (2.0, 80.0, False)}


def test_review_finds_the_largest_hour_within_12_months() -> None:
    now = H0 + 400 * 86400
    recs = [rec(H0, 3600, 9.0, 400.0)]  # older than 12 months: ignored
    recs += [rec(now - 86400 * k, 3600, 1.0 + k / 100, 50.0 + k) for k in range(1, 200)]
    recs += [rec(now - 3600 * 5, 3600, 0.5, 300.0, ("no_data",))]
    r = contract_review(recs, now, 2.5, 250.0)
    assert r["max_flow_m3h"] == 2.99 and r["flow_ratio"] == round(2.99 / 2.5, 3)
    assert r["max_power_kw"] == 300.0 and r["power_ratio"] == 1.2
    assert r["hours"] == 200 and r["hours_interpolated"] == 1
    assert "120 % of the contracted 250.0 kW" in describe(r)


def test_no_hours_no_figures() -> None:
    r = contract_review([], H0 + YEAR_S, 2.5, None)
    assert r["max_flow_m3h"] is None and "no complete hour" in describe(r)
