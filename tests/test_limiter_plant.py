"""The limiter's pure law closed over the simulator's pure plant (no I/O): slow
actuators and meters, the return-temperature limitation, overrides and a restart
through a real store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from agent import limiter_store
from agent.limiter import Action, LimiterParams, LimiterState, Override, step
from agent.store import Store
from simulator.plant import Plant
from simulator.scenarios import get_scenario
from tests.support.plant import LIMIT, T0, limiter_params, reading


def params(sc: str, period_s: int = 600, **kw: Any) -> LimiterParams:
    return dataclasses.replace(limiter_params(get_scenario(sc), period_s), **kw)


class Loop:
    def __init__(
        self, sc: str, p: LimiterParams, s: LimiterState | None = None, **plant: Any
    ) -> None:
        params = dataclasses.replace(get_scenario(sc), **plant)
        self.pl = Plant(sc, seed=1, t0=T0, params=params)
        self.p = p
        self.s = s or LimiterState.initial()
        self.actions: list[tuple[float, Action]] = []
        self.moving_writes = 0
        self.avgs: list[float] = []  # true average flow of every whole period
        self.v0 = self.pl.delivered_volume_m3

    def run(self, seconds: int, down: bool = False) -> list[float]:
        """Step (``down``: the agent is not running); return the new whole-period
        averages."""
        n = len(self.avgs)
        for _ in range(seconds):
            if not down:
                self.s, a = step(self.p, self.s, reading(self.pl))
                self.actions.append((self.pl.t, a))
                if a.write_pct is not None:
                    if self.pl.actuator.moving and not a.refresh:
                        self.moving_writes += 1
                    self.pl.write_limit(round(a.write_pct * 10) / 10)
            self.pl.step(1.0)
            ps = self.p.period_s
            if round(self.pl.t - T0) % ps == 0:
                self.avgs.append((self.pl.delivered_volume_m3 - self.v0) * 3600.0 / ps)
                self.v0 = self.pl.delivered_volume_m3
        return self.avgs[n:]

    def kinds(self) -> list[str]:
        return [e["kind"] for _, a in self.actions for e in a.events]


def test_slow_actuator_and_meter_hold_every_period_without_writing_while_moving() -> None:
    lp = Loop("winter-peak-slow", params("winter-peak-slow"))
    avgs = lp.run(6 * 600)
    assert all(0.97 * LIMIT <= q <= 1.01 * LIMIT for q in avgs[1:]), avgs
    assert avgs[0] <= 1.05 * LIMIT
    assert lp.moving_writes == 0  # no new command while the valve travels
    moves = sum(1 for _, a in lp.actions if a.write_pct is not None and not a.refresh)
    assert moves <= 120 * 6 * 600 / 3600


def test_slower_plant_also_holds() -> None:
    lp = Loop("winter-peak-slower", params("winter-peak-slower", period_s=1200))
    avgs = lp.run(4 * 1200)
    assert all(0.95 * LIMIT <= q <= 1.02 * LIMIT for q in avgs[1:]), avgs


def test_the_old_law_without_the_valve_model_overshoots_on_the_slow_plant() -> None:
    """The same plant, but the law told it is instant and linear and given no position:
    this is what the slow-plant law fixes (the test would pass trivially otherwise)."""
    p = params("winter-peak-slow", stroke_s=0.0, characteristic="linear", meter_lag_s=0.0)
    lp = Loop("winter-peak-slow", p)
    worst = 0.0
    for _ in range(3):
        avgs = lp.run(600)
        worst = max(worst, max(avgs))
    good = Loop("winter-peak-slow", params("winter-peak-slow"))
    good_avgs = good.run(1800)
    assert max(good_avgs[1:]) <= 1.01 * LIMIT
    assert worst > max(good_avgs[1:])


def test_restart_through_the_store_keeps_the_budget(tmp_path: Path) -> None:
    """Down for 60 s mid-period with the valve released by the actuator's watchdog (the
    building takes about twice the contract meanwhile). The state saved 100 s before the
    crash through the real store is loaded at the restart: the period still ends at the
    limit. A fresh state only estimates the used volume and misses the period."""

    def second_period(restore: bool) -> tuple[float, list[str]]:
        p = params("winter-peak-slow", refresh_s=3.0)  # the runner: watchdog_s / 3
        lp = Loop("winter-peak-slow", p, watchdog_s=10.0)
        lp.run(600 + 140)
        with Store(tmp_path / f"{restore}.db") as st:
            limiter_store.save(st, lp.s)
        lp.run(100)  # state moves on; the saved copy is 100 s old at the crash
        lp.run(60, down=True)
        assert lp.pl.valve_limit_pct == 100.0  # released by the watchdog
        with Store(tmp_path / f"{restore}.db") as st:
            loaded = limiter_store.load(st)
        assert loaded is not None
        lp.s = loaded if restore else LimiterState.initial()
        n = len(lp.actions)
        lp.run(300)
        assert len(lp.avgs) == 2
        return lp.avgs[1], [e["kind"] for _, a in lp.actions[n:] for e in a.events]

    kept, kinds = second_period(True)
    assert 0.97 * LIMIT <= kept <= 1.01 * LIMIT, kept
    assert "flow_limit_exceeded" not in kinds, kinds
    fresh, _ = second_period(False)
    assert abs(fresh - 0.99 * LIMIT) > abs(kept - 0.99 * LIMIT) + 0.01 * LIMIT, (fresh, kept)


def test_return_limit_engages_and_releases_and_never_raises_the_flow() -> None:
    p = params("return-high", period_s=600, return_max_c=50.0, return_hold_s=30.0)
    lp = Loop("return-high", p)
    lp.run(900)
    kinds = lp.kinds()
    assert kinds.count("return_limit_engaged") == 1, kinds
    assert kinds.count("return_limit_released") == 1, kinds
    assert kinds.index("return_limit_engaged") < kinds.index("return_limit_released")
    engaged = next(
        t for t, a in lp.actions for e in a.events if e["kind"] == "return_limit_engaged"
    )
    assert 60 + 30 <= engaged - T0 <= 60 + 30 + 5


def test_return_limit_brings_the_return_down() -> None:
    p = params("return-high", period_s=600, return_max_c=50.0, return_hold_s=30.0)
    p = dataclasses.replace(p, flow_limit_m3h=None)  # the return limit alone
    lp = Loop("return-high", p)
    rets: list[float] = []
    for _ in range(340):
        lp.run(1)
        rets.append(lp.pl.return_c)
    assert max(rets[:55]) < 45.0
    assert max(rets[60:100]) > 54.0  # high until the limitation engages
    assert sum(rets[-40:]) / 40 <= 51.0, rets[-40:]


def test_override_lowers_the_limit_and_expires() -> None:
    o = Override(until=T0 + 1200, flow_limit_m3h=1.5, id="dr-1", since=T0)
    lp = Loop("winter-peak", params("winter-peak", period_s=600), LimiterState(override=o))
    avgs = lp.run(1800)
    assert 0.95 * 1.5 <= avgs[1] <= 1.5 * 1.01, avgs
    assert 0.95 * LIMIT <= avgs[2] <= LIMIT * 1.01, avgs
    ends = [e for _, a in lp.actions for e in a.events if e["kind"] == "limit_override_end"]
    assert len(ends) == 1 and ends[0]["t"] == T0 + 1200 and ends[0]["id"] == "dr-1"
    assert lp.s.override is None
