"""The simulator (real Modbus TCP, in process) and the agent's whole pipeline (in process)
on one shared scaled clock: a simulated hour in minutes, where only simulated time matters.

    truth = asyncio.run(run_scaled(tmp, "winter-peak", 360, 60, contract))

runs ``sim_seconds`` of simulated time and returns the simulator's truth lines; the agent's
store and keys are in ``tmp`` (read them back with ``tests.support.records.stored``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import load
from agent.runner import Agent
from simulator.scenarios import get_scenario
from simulator.server import SimServer
from tests.support.records import truth_lines
from tests.support.rig import ScaledClock, free_port, write_config

SPEED = 20.0  # simulated seconds a real second


async def run_scaled(
    tmp: Path,
    scenario: str,
    sim_seconds: float,
    period_s: int,
    contract: str,
    extra: str = "",
    mqtt_url: str | None = None,
    **plant: Any,
) -> list[dict[str, Any]]:
    """Sim + agent for ``sim_seconds`` of simulated time, starting mid-period; ``plant``
    overrides the scenario's parameters; without ``mqtt_url`` the agent's broker is a
    closed port (records stay in its store)."""
    t0 = math.floor(time.time() / period_s) * period_s + 0.5 * period_s
    clock = ScaledClock(SPEED, t0)
    truth = tmp / "truth.jsonl"
    params = replace(get_scenario(scenario), **plant)
    async with SimServer(
        scenario, seed=1, truth_path=str(truth), clock=clock, params=params
    ) as sim:
        assert sim.tcp_address is not None
        url = mqtt_url or f"mqtt://127.0.0.1:{free_port()}"
        cfg = load(write_config(tmp, sim.tcp_address[1], url, period_s, contract, extra))
        # poll as fast as the loop goes (the scaled monotonic clock runs SPEED times faster
        # than the sleeps: about 4 polls per simulated second), below check-config's floor
        cfg = replace(cfg, devices=tuple(replace(d, poll_s=1.0 / SPEED) for d in cfg.devices))
        agent = Agent(cfg, clock=clock)
        task = asyncio.create_task(agent.run())
        end = time.monotonic() + sim_seconds / SPEED
        while time.monotonic() < end and not task.done():
            await asyncio.sleep(0.2)
        agent.stopping.set()
        await asyncio.wait_for(task, 30)
    return truth_lines(truth)
