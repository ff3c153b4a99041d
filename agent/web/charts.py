"""Which plots the 48-hour page shows, from interval records. Pure: records and limits in,
``svg.Plot`` descriptions out.

Per heat meter: hourly-average flow (and the period's largest reading) against the
contracted flow; average power (against the contracted power when there is one); supply
and return temperature against the delivery terms (``supply_min_c``, ``return_max_c``).
Per pressure-difference sensor: the period's lowest and average dp against ``dp_min_kpa``.
Records flagged ``no_data`` and ``interpolated`` become marked spans on the device's plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.finite import number
from agent.protocol import DP_SENSOR, HEAT_METER
from agent.timefmt import parse_time
from agent.web.svg import Plot, RefLine, Series, Span, downsample


def rec_time(rec: Mapping[str, Any], key: str) -> float | None:
    return parse_time(rec.get(key))


def _val(rec: Mapping[str, Any], key: str) -> float | None:
    return number(rec.get(key))


def _points(
    recs: Sequence[tuple[float, Mapping[str, Any]]], key: str, t0: float, t1: float
) -> list[tuple[float, float | None]]:
    return downsample([(t, _val(r, key)) for t, r in recs], t0, t1)


def spans(recs: Sequence[tuple[float, Mapping[str, Any]]], period_s: float) -> list[Span]:
    out = []
    for t, r in recs:
        flags = r.get("flags") or ()
        for kind in ("no_data", "interpolated"):
            if kind in flags:
                out.append(Span(t - period_s / 2, t + period_s / 2, kind))
    return out


def _ref(label: str, v: Any, css: str = "ref") -> list[RefLine]:
    return [RefLine(label, float(v), css)] if isinstance(v, int | float) else []


def device_plots(
    name: str,
    role: str,
    records: Sequence[Mapping[str, Any]],
    t0: float,
    t1: float,
    contract: Mapping[str, Any],
    delivery: Mapping[str, Any],
) -> list[Plot]:
    """The plots of one device over [t0, t1]; x is each period's middle (a record whose
    middle lies outside is left out)."""
    recs = []
    period = 3600.0
    for r in records:
        s, en = rec_time(r, "start"), rec_time(r, "end")
        if s is None or en is None:
            continue
        period = en - s
        if t0 <= (s + en) / 2 <= t1:
            recs.append(((s + en) / 2, r))
    sp = spans(recs, period)

    def plot(title: str, unit: str, series: list[Series], refs: list[RefLine]) -> Plot:
        return Plot(f"{name}: {title}", unit, t0, t1, series, refs, sp)

    def ser(key: str, label: str, css: str) -> Series:
        return Series(key, label, _points(recs, key, t0, t1), css)

    if role == HEAT_METER:
        return [
            plot("flow", "m3/h",
                 [ser("flow_avg_m3h", "average flow", "s0"), ser("flow_max_m3h", "largest", "s1")],
                 _ref("contract", contract.get("flow_limit_m3h"), "ref limit")),
            plot("power", "kW",
                 [ser("power_avg_kw", "average power", "s0"), ser("power_max_kw", "largest", "s1")],
                 _ref("contract", contract.get("power_limit_kw"), "ref limit")),
            plot("supply and return", "°C",
                 [ser("supply_avg_c", "supply", "s2"), ser("return_avg_c", "return", "s3")],
                 _ref("supply min", delivery.get("supply_min_c"), "ref supply")
                 + _ref("return max", delivery.get("return_max_c"), "ref return")),
        ]  # fmt: skip
    if role == DP_SENSOR:
        return [
            plot("pressure difference", "kPa",
                 [ser("dp_min_kpa", "lowest", "s0"), ser("dp_avg_kpa", "average", "s1")],
                 _ref("dp min", delivery.get("dp_min_kpa"), "ref limit")),
        ]  # fmt: skip
    return []
