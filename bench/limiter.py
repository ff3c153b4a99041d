"""The limiter's control law against the simulator's plant, in-process, at high speed.

A day of ``winter-peak`` (demand 1.5-2.5 x a 2.5 m3/h contract) with
``simulator.plant.Plant`` driven directly: every simulated second the meter is read as
the sim-heat-meter profile shows it (volume floored to 0.001 m3, energy to 0.1 kWh,
flow and power as float32), ``agent.limiter.step`` runs, and a write goes to the
actuator as dh-sim applies it (``Plant.write_limit``, 0.1 % register steps, watchdog
refreshed); then the plant advances one second.

Figures, per configuration: period 3600 s and 60 s, a bare run without limiter, and as
robustness checks (not targets) ``mixed`` (demand crossing the contract, so the limiter
releases and re-engages) and ``slow`` (the actuator travels 0.5 %/s
instead of jumping; the law is not told):

* ``utilisation``: delivered volume / allowed volume over the limited periods (periods
  in which the limiter was limiting at some time), where the allowed volume of a period
  is ``min(limit x period, the building's demand volume)``, by the plant's truth;
* ``overshoot_pct``: the worst full period's average flow over the limit, in %, by truth
  (0 when no period is over); ``..._reg`` the same by the meter's registers, i.e. what
  the interval records show;
* ``min_ratio`` / ``max_ratio``: the lowest / highest period average / limit;
* ``writes_per_h``: actuator writes per hour.

Last line JSON: the 3600 s figures, ``{"utilisation": .., "overshoot_pct": ..}``, plus
the 60 s ones under ``p60_*`` and the bare overshoot under ``bare_overshoot_pct``.

    python -m bench.limiter [--hours 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agent.limiter import LimiterParams, LimiterState, MeterInput, step
from simulator.plant import Plant
from simulator.scenarios import ScenarioParams, get_scenario

LIMIT = 2.5
T0 = 1_705_276_800.0  # 2024-01-15T00:00:00Z, aligned to every period


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def reading(pl: Plant) -> MeterInput:
    return MeterInput(
        t=pl.t,
        volume_m3=math.floor(pl.volume_m3 / 0.001 + 1e-9) * 0.001,
        energy_kwh=math.floor(pl.energy_kwh / 0.1 + 1e-9) * 0.1,
        flow_m3h=f32(pl.flow_m3h),
        power_kw=f32(pl.power_kw),
        valid=True,
    )


@dataclass
class Period:
    start: float
    delivered: float = 0.0
    demand: float = 0.0
    reg: float = 0.0
    limited: bool = False


@dataclass
class Run:
    periods: list[Period] = field(default_factory=list)
    writes: int = 0
    events: dict[str, int] = field(default_factory=dict)
    seconds: int = 0


def simulate(
    period_s: int,
    seconds: int,
    seed: int,
    limiter: bool,
    scenario: ScenarioParams | None = None,
    travel_pct_s: float | None = None,
) -> Run:
    """One run. ``scenario`` replaces winter-peak; ``travel_pct_s`` makes the actuator
    move its limit toward the written value at that many % per second instead of at
    once (a slow actuator; the law is not told)."""
    pl = Plant("winter-peak", seed=seed, t0=T0, params=scenario)
    command = 100.0
    p = LimiterParams(
        flow_limit_m3h=LIMIT, power_limit_kw=None, period_s=period_s, enforce=True, refresh_s=20.0
    )
    s = LimiterState.initial()
    run = Run(seconds=seconds)
    cur = Period(T0)
    v_true0, v_reg0 = pl.delivered_volume_m3, reading(pl).volume_m3
    for _ in range(seconds):
        m = reading(pl)
        if limiter:
            s, a = step(p, s, m)
            for ev in a.events:
                run.events[ev["kind"]] = run.events.get(ev["kind"], 0) + 1
            if a.write_pct is not None:
                command = round(a.write_pct * 10) / 10
                run.writes += 1
                if travel_pct_s is None:
                    pl.write_limit(command)
            if travel_pct_s is not None and pl.valve_limit_pct != command:
                d = command - pl.valve_limit_pct
                pl.write_limit(pl.valve_limit_pct + max(-travel_pct_s, min(travel_pct_s, d)))
            cur.limited = cur.limited or a.limiting
        cur.demand += pl.demand_flow_m3h / 3600.0
        pl.step(1.0)
        if round(pl.t - T0) % period_s == 0:
            reg = reading(pl).volume_m3
            assert reg is not None and v_reg0 is not None
            cur.delivered = pl.delivered_volume_m3 - v_true0
            cur.reg = reg - v_reg0
            run.periods.append(cur)
            cur = Period(pl.t)
            v_true0, v_reg0 = pl.delivered_volume_m3, reg
    return run


def figures(run: Run, period_s: int) -> dict[str, Any]:
    allow = LIMIT * period_s / 3600.0
    lim = [q for q in run.periods if q.limited]
    every = run.periods
    ratios = [q.delivered / allow for q in every]
    ratios_reg = [q.reg / allow for q in every]
    delivered = sum(q.delivered for q in lim)
    allowed = sum(min(allow, q.demand) for q in lim)
    return {
        "periods": len(every),
        "limited_periods": len(lim),
        "utilisation": round(delivered / allowed, 4) if allowed > 0 else None,
        "overshoot_pct": round(max(0.0, (max(ratios) - 1.0) * 100.0), 3),
        "overshoot_pct_reg": round(max(0.0, (max(ratios_reg) - 1.0) * 100.0), 3),
        "min_ratio": round(min(ratios), 4),
        "max_ratio": round(max(ratios), 4),
        "min_ratio_reg": round(min(ratios_reg), 4),
        "max_ratio_reg": round(max(ratios_reg), 4),
        "min_demand_ratio": round(min(q.demand / allow for q in every), 3),
        "max_demand_ratio": round(max(q.demand / allow for q in every), 3),
        "writes_per_h": round(run.writes * 3600.0 / run.seconds, 1),
        "events": run.events,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    seconds = int(args.hours * 3600)
    # demand crossing the contract twice a day: release and re-engage
    mixed = replace(
        get_scenario("winter-peak"), ua_kw_k=5.0, outdoor_mean_c=-10.0, outdoor_amp_c=12.0
    )
    runs: list[tuple[str, int, bool, ScenarioParams | None, float | None]] = [
        ("p3600", 3600, True, None, None),
        ("p60", 60, True, None, None),
        ("bare", 3600, False, None, None),
        ("mixed3600", 3600, True, mixed, None),
        ("mixed60", 60, True, mixed, None),
        ("slow3600", 3600, True, None, 0.5),  # actuator travels 0.5 %/s
        ("slow60", 60, True, None, 0.5),
    ]
    out: dict[str, dict[str, Any]] = {}
    for name, period_s, lim, sc, travel in runs:
        c0 = time.perf_counter()
        f = figures(simulate(period_s, seconds, args.seed, lim, sc, travel), period_s)
        f["cpu_s"] = round(time.perf_counter() - c0, 1)
        out[name] = f
        print(f"{name:9s} period {period_s:5d} s: {json.dumps(f)}", flush=True)
    a, b, bare = out["p3600"], out["p60"], out["bare"]
    print(
        json.dumps(
            {
                "utilisation": a["utilisation"],
                "overshoot_pct": a["overshoot_pct"],
                "p60_utilisation": b["utilisation"],
                "p60_overshoot_pct": b["overshoot_pct"],
                "p60_min_ratio": b["min_ratio"],
                "p60_max_ratio_reg": b["max_ratio_reg"],
                "p60_min_ratio_reg": b["min_ratio_reg"],
                "bare_overshoot_pct": bare["overshoot_pct"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
