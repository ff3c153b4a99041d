"""Issue 13 item 4: a wall clock that jumps 10 minutes ahead for 4 seconds. The agent's
whole pipeline in one process (simulator over real Modbus TCP, real store) on a scaled
clock whose wall time the test steps; the monotonic clock never jumps."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import load
from agent.runner import Agent
from simulator.server import SimServer
from tests.support.records import stored, ts_of
from tests.support.rig import ScaledClock, free_port, write_config

SPEED = 10.0
PERIOD = 5


class SteppedClock:
    """The shared scaled clock, with a wall clock the test can step."""

    def __init__(self, base: ScaledClock) -> None:
        self.base = base
        self.step = 0.0

    def wall(self) -> float:
        return self.base.wall() + self.step

    def mono(self) -> float:
        return self.base.mono()

    def synced(self) -> bool:
        return True


async def run_agent(cfg: Any, clock: Any, sim_seconds: float, during: Any = None) -> None:
    agent = Agent(cfg, clock=clock)
    task = asyncio.create_task(agent.run())
    end = time.monotonic() + sim_seconds / SPEED
    while time.monotonic() < end and not task.done():
        if during is not None:
            await during()
        await asyncio.sleep(0.05)
    agent.stopping.set()
    await asyncio.wait_for(task, 30)


def test_a_forward_step_never_books_future_periods(tmp_path: Path) -> None:
    t0 = math.floor(time.time() / PERIOD) * PERIOD + 0.5 * PERIOD
    base = ScaledClock(SPEED, t0)
    clock = SteppedClock(base)

    async def main() -> float:
        async with SimServer("steady", seed=1, clock=base) as sim:
            assert sim.tcp_address is not None
            cfg = load(
                write_config(
                    tmp_path, sim.tcp_address[1], f"mqtt://127.0.0.1:{free_port()}", PERIOD
                )
            )
            cfg = replace(cfg, devices=tuple(replace(d, poll_s=1.0 / SPEED) for d in cfg.devices))
            stepped_at: list[float] = []

            async def step() -> None:  # 10 minutes ahead for 4 s, 30 s in
                m = base.mono()
                if not stepped_at and m >= 30:
                    clock.step = 600.0
                    stepped_at.append(m)
                elif stepped_at and clock.step and m >= stepped_at[0] + 4:
                    clock.step = 0.0

            await run_agent(cfg, clock, 70, step)
            assert stepped_at, "the step never happened"
            # a restart afterwards: the boundary is where the monotonic clock put it
            await run_agent(cfg, clock, 30)
            return base.wall()

    now = asyncio.run(main())
    recs = stored(tmp_path, "interval")
    for dev in ("hm1", "dp1", "act1"):
        starts = [ts_of(r["start"]) for r in recs if r["device"] == dev]
        assert starts, dev
        assert max(starts) + PERIOD <= now + 1, f"{dev}: a record for a future period"
        assert len(starts) == len(set(starts)), f"{dev}: a period twice"
        gaps = [b - a for a, b in itertools.pairwise(starts) if b - a != PERIOD]
        assert not gaps, f"{dev}: periods missing: {gaps}"
        # records all through: before, across and after the step and the restart
        assert len(starts) >= (100 - 2 * PERIOD) / PERIOD - 4, (dev, len(starts))
    steps = [e for e in stored(tmp_path, "event") if e["kind"] == "clock_step"]
    assert steps and steps[0]["step_s"] >= 599 and steps[0]["action"] == "held"
