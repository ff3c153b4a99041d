"""CPU cost of one full poll of the simulated heat meter: Device.read vs bare pymodbus.

The simulator runs as a separate process (``dh-sim --tcp 127.0.0.1:0``), so only this
process's CPU (time.process_time) is counted. In one run and one event loop, the same
register blocks (``plan_reads`` of the sim-heat-meter profile) are read

* through ``drivers.device.Device.read`` (lock, retries bookkeeping, decode to typed
  values with quality, health, counters), and
* with a bare ``AsyncModbusTcpClient`` (the reads only, no decoding),

alternating in rounds so drift (CPU frequency, simulator state) hits both alike.
Last line: {"driver_cpu_us": .., "bare_cpu_us": .., "ratio": ..}.

    python -m bench.poll_overhead [--polls 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from drivers.clock_sys import SystemClock
from drivers.device import Device, DeviceSpec
from drivers.profile import ReadBlock, load_profile, plan_reads


def start_sim() -> tuple[subprocess.Popen[str], str, int]:
    exe = Path(sys.executable).parent / "dh-sim"
    proc = subprocess.Popen(
        [str(exe), "--tcp", "127.0.0.1:0", "--scenario", "steady", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        host, port = json.loads(line)["tcp"].rsplit(":", 1)
    except Exception:
        proc.kill()
        raise RuntimeError(f"dh-sim did not report its address: {line!r}") from None
    return proc, host, int(port)


async def bare_poll(client: AsyncModbusTcpClient, blocks: list[ReadBlock]) -> None:
    for b in blocks:
        fn = (
            client.read_holding_registers
            if b.function == "holding"
            else client.read_input_registers
        )
        rr = await fn(b.address, count=b.count, device_id=1)
        if rr.isError():
            raise RuntimeError(f"bare read failed: {rr}")


async def measure(host: str, port: int, polls: int, rounds: int) -> dict[str, float]:
    profile = load_profile("sim-heat-meter")
    blocks = plan_reads(profile.registers, profile.max_gap)
    dev = Device(
        DeviceSpec("hm", profile.role, profile, "tcp", host=host, port=port, timeout_s=2.0),
        SystemClock(),
    )
    client = AsyncModbusTcpClient(host, port=port, timeout=2.0)
    await client.connect()
    per = max(1, polls // rounds)
    cpu = {"driver": 0.0, "bare": 0.0}
    wall = {"driver": 0.0, "bare": 0.0}
    n = {"driver": 0, "bare": 0}
    try:
        for _ in range(50):  # warm up both paths (connect, caches)
            r = await dev.read()
            if not r.ok:
                raise RuntimeError(f"driver read failed: {r.error}")
            await bare_poll(client, blocks)
        for _ in range(rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(per):
                r = await dev.read()
                if not r.ok:
                    raise RuntimeError(f"driver read failed: {r.error}")
            cpu["driver"] += time.process_time() - c0
            wall["driver"] += time.perf_counter() - w0
            n["driver"] += per
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(per):
                await bare_poll(client, blocks)
            cpu["bare"] += time.process_time() - c0
            wall["bare"] += time.perf_counter() - w0
            n["bare"] += per
    finally:
        client.close()
        await dev.close()
    d_us = cpu["driver"] / n["driver"] * 1e6
    b_us = cpu["bare"] / n["bare"] * 1e6
    print(f"blocks per poll: {len(blocks)} ({[(b.address, b.count) for b in blocks]})")
    for k in ("driver", "bare"):
        print(
            f"{k:6}: {n[k]} polls, cpu {cpu[k] / n[k] * 1e6:8.1f} us/poll, "
            f"wall {wall[k] / n[k] * 1e6:8.1f} us/poll"
        )
    return {
        "driver_cpu_us": round(d_us, 1),
        "bare_cpu_us": round(b_us, 1),
        "ratio": round(d_us / b_us, 3),
        "polls": n["driver"],
        "blocks": len(blocks),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    proc, host, port = start_sim()
    try:
        result = asyncio.run(measure(host, port, a.polls, a.rounds))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
