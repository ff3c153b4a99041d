"""The limiter's control law against the simulator's plant, in-process, at high speed.

A day of ``winter-peak`` (demand 1.5-2.5 x a 2.5 m3/h contract) with
``simulator.plant.Plant`` driven directly: every simulated second the meter is read as
the sim-heat-meter profile shows it (``Plant.meter.shown``: volume floored to 0.001 m3,
energy to 0.1 kWh, flow and power as float32) with the actuator's reported position
(0.1 % steps), ``agent.limiter.step`` runs, and a write goes to the actuator as dh-sim
applies it (``Plant.write_limit``, 0.1 % register steps, watchdog refreshed); then the
plant advances one second.

Cases: the instant plant (period 3600 s and 60 s), a bare run without limiter,
``mixed`` (demand crossing the contract, so the limiter releases and re-engages), and
real hardware: ``slow`` (scenario ``winter-peak-slow``: 90 s full-stroke actuator with a
0.5 % deadband on an equal-percentage valve, meter refreshed every 10 s with a 5 s lag),
``restart`` (the same, the limiter restarted at a random moment of every hour: down
5-60 s, then its state loaded from a real ``agent.store.Store`` where it was saved
through ``agent.limiter_store`` every 300 s and at each period close, as the runner
does) and ``slower`` (180 s stroke, meter refreshed every 60 s).

* ``utilisation``: delivered volume / allowed volume over the limited periods (periods
  in which the limiter was limiting at some time), where the allowed volume of a period
  is ``min(limit x period, the building's demand volume)``, by the plant's truth;
* ``overshoot_pct``: the worst full period's average flow over the limit, in %, by truth
  (0 when no period is over); ``..._reg`` the same by the meter's registers;
* ``min_ratio`` / ``max_ratio``: the lowest / highest period average / limit;
* ``writes_per_h``: actuator writes per hour; ``moves_per_h`` those that were not
  watchdog refreshes.

Last line JSON: the instant 3600 s figures ``utilisation``, ``overshoot_pct``, the 60 s
ones under ``p60_*``, ``bare_overshoot_pct``, and ``slow_utilisation``,
``slow_overshoot_pct``, ``slow_writes_per_hour``, ``restart_overshoot_pct`` (with
``restart_utilisation``), ``slower_utilisation``, ``slower_overshoot_pct``.

    python -m bench.limiter [--hours 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import limiter_store
from agent.limiter import LimiterState, step
from agent.store import Store
from simulator.plant import Plant
from simulator.scenarios import ScenarioParams, get_scenario
from tests.support.plant import LIMIT, T0, limiter_params, reading


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
    moves: int = 0
    restarts: int = 0
    events: dict[str, int] = field(default_factory=dict)
    seconds: int = 0


def simulate(
    period_s: int,
    seconds: int,
    seed: int,
    limiter: bool,
    scenario: ScenarioParams | None = None,
    restart_db: Path | None = None,
) -> Run:
    """One run. ``restart_db``: restart the limiter once an hour through that store."""
    pl = Plant("winter-peak", seed=seed, t0=T0, params=scenario)
    p = limiter_params(pl.params, period_s)
    s = LimiterState.initial()
    run = Run(seconds=seconds)
    cur = Period(T0)
    v_true0, v_reg0 = pl.delivered_volume_m3, reading(pl).volume_m3
    rng = random.Random(f"{seed}:restarts")
    store = Store(restart_db) if restart_db is not None else None
    down_at, up_at = -1, -1
    try:
        for i in range(seconds):
            if store is not None:
                if i % 3600 == 0:
                    down_at = i + rng.randrange(0, 3600)
                    up_at = down_at + rng.randrange(5, 61)
                if i % 300 == 0 and not (down_at <= i < up_at):
                    limiter_store.save(store, s)
                if i == up_at:
                    loaded = limiter_store.load(store)
                    assert loaded is not None
                    s, run.restarts = loaded, run.restarts + 1
            m = reading(pl)
            if limiter and not (down_at <= i < up_at):
                s, a = step(p, s, m)
                for ev in a.events:
                    run.events[ev["kind"]] = run.events.get(ev["kind"], 0) + 1
                if a.write_pct is not None:
                    run.writes += 1
                    run.moves += 0 if a.refresh else 1
                    pl.write_limit(round(a.write_pct * 10) / 10)
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
                if store is not None and not (down_at <= i < up_at):
                    limiter_store.save(store, s)  # with the period's records
    finally:
        if store is not None:
            store.close()
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
        "moves_per_h": round(run.moves * 3600.0 / run.seconds, 1),
        "restarts": run.restarts,
        "events": run.events,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="comma-separated cases (no summary line)")
    args = ap.parse_args(argv)
    seconds = int(args.hours * 3600)
    # demand crossing the contract twice a day: release and re-engage
    mixed = replace(
        get_scenario("winter-peak"), ua_kw_k=5.0, outdoor_mean_c=-10.0, outdoor_amp_c=12.0
    )
    slow, slower = get_scenario("winter-peak-slow"), get_scenario("winter-peak-slower")
    runs: list[tuple[str, int, bool, ScenarioParams | None, bool]] = [
        ("p3600", 3600, True, None, False),
        ("p60", 60, True, None, False),
        ("bare", 3600, False, None, False),
        ("mixed3600", 3600, True, mixed, False),
        ("mixed60", 60, True, mixed, False),
        ("slow", 3600, True, slow, False),
        ("restart", 3600, True, slow, True),
        ("slower", 3600, True, slower, False),
    ]
    only = set(args.only.split(",")) if args.only else None
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dh-bench-limiter-") as tmp:
        for name, period_s, lim, sc, restart in runs:
            if only is not None and name not in only:
                continue
            c0 = time.perf_counter()
            db = Path(tmp) / f"{name}.db" if restart else None
            f = figures(simulate(period_s, seconds, args.seed, lim, sc, db), period_s)
            f["cpu_s"] = round(time.perf_counter() - c0, 1)
            out[name] = f
            print(f"{name:9s} period {period_s:5d} s: {json.dumps(f)}", flush=True)
    if only is not None:
        return 0
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
                "slow_utilisation": out["slow"]["utilisation"],
                "slow_overshoot_pct": out["slow"]["overshoot_pct"],
                "slow_writes_per_hour": out["slow"]["moves_per_h"],
                "restart_overshoot_pct": out["restart"]["overshoot_pct"],
                "restart_utilisation": out["restart"]["utilisation"],
                "slower_utilisation": out["slower"]["utilisation"],
                "slower_overshoot_pct": out["slower"]["overshoot_pct"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
