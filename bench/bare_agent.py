"""Bare baseline for bench/footprint.py: the 40-line script a gateway could run instead of
the agent. pymodbus polls the simulator's three units (the same register blocks as the
agent's profiles) every POLL_S, decodes them with struct, and paho publishes the latest
values as JSON telemetry every TELEMETRY_S. No store, no signing, no records.

    python -m bench.bare_agent HOST:PORT BROKER_PORT TOPIC
"""

import asyncio
import json
import struct
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

from drivers.profile import load_profile, plan_reads
from simulator.layout import UNITS

FMT = {"u16": ">H", "s16": ">h", "u32": ">I", "s32": ">i", "f32": ">f"}
POLL_S, TELEMETRY_S = 1.0, 10.0


async def main(host: str, port: int, broker_port: int, topic: str) -> None:
    units = []
    for _role, name, unit in UNITS:
        prof = load_profile(name)
        units.append((name, unit, plan_reads(prof.registers, prof.max_gap)))
    mq = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-agent")
    mq.connect("127.0.0.1", broker_port)
    mq.loop_start()
    client = AsyncModbusTcpClient(host, port=port, timeout=2.0)
    await client.connect()
    latest: dict[str, dict[str, float]] = {}
    next_poll = next_pub = time.monotonic()
    while True:
        for name, unit, blocks in units:
            values: dict[str, float] = {}
            for b in blocks:
                fn = (
                    client.read_holding_registers
                    if b.function == "holding"
                    else client.read_input_registers
                )
                rr = await fn(b.address, count=b.count, device_id=unit)
                for r in b.registers:
                    i = r.address - b.address
                    words = rr.registers[i : i + r.count]
                    if r.word_order == "little":
                        words = words[::-1]
                    raw = struct.pack(">" + "H" * r.count, *words)
                    values[r.name] = struct.unpack(FMT[r.type], raw)[0] * r.scale + r.offset
            latest[name] = {"ts": time.time(), **values}
        if time.monotonic() >= next_pub:
            mq.publish(topic, json.dumps({"devices": latest}), qos=0)
            next_pub += TELEMETRY_S
        next_poll += POLL_S
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))


if __name__ == "__main__":
    h, p = sys.argv[1].rsplit(":", 1)
    asyncio.run(main(h, int(p), int(sys.argv[2]), sys.argv[3]))
