"""A Modbus heat meter whose profile names a `serial` register reports its identity too:
the simulator's meter swap (Modbus TCP, real socket) changes it, and the runner's meter
watch makes one `meter_replaced` event from the readings."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from agent.meters import MeterWatch
from drivers.clock_sys import SystemClock
from drivers.device import Device, DeviceSpec
from drivers.profile import load_profile
from drivers.types import Reading
from simulator.scenarios import get_scenario
from simulator.server import SimServer


def test_modbus_serial_is_the_meter_id_and_a_swap_is_one_event() -> None:
    async def main() -> list[Reading]:
        params = replace(get_scenario("meter-swap"), meter_swap_after_s=1.5)
        async with SimServer("meter-swap", seed=2, params=params) as sim:
            assert sim.tcp_address is not None
            prof = load_profile("sim-heat-meter")
            dev = Device(
                DeviceSpec("hm1", "heat_meter", prof, "tcp", port=sim.tcp_address[1]),
                SystemClock(),
            )
            out = []
            for _ in range(12):
                out.append(await dev.read())
                await asyncio.sleep(0.3)
            await dev.close()
            return out

    readings = asyncio.run(main())
    ids = [r.meter_id for r in readings if r.ok]
    assert all(ids) and len(set(ids)) == 2, ids
    assert sum(a != b for a, b in itertools.pairwise(ids)) == 1  # one change, no flapping
    watch = MeterWatch()
    events = [e for r in readings for e in watch.observe("hm1", r)]
    swaps = [e for e in events if e["kind"] == "meter_replaced"]
    assert len(swaps) == 1
    assert swaps[0]["old_energy_kwh"] > 1000 and swaps[0]["new_energy_kwh"] < 10
