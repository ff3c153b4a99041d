"""Wired M-Bus line figures: the master against `dh-sim --mbus-pty --mbus-baud 2400` (its own
process, emulating the line time of 2400 baud, 11 bits a byte).

``requests_per_poll``: requests on the line per poll of a single-telegram meter in steady
state (after the first poll's SND_NKE); target 1.0 (no SND_NKE before every read).
``line_overhead``: the polls' wall time / the time their bytes (request + reply) take on a
2400-baud line; target <= 1.15. ``poll_s`` is the median wall time of one poll.

    python -m bench.mbus_line [--polls 20]      (also joined into bench.mbus's last line)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from drivers.clock_sys import SystemClock
from drivers.mbus_device import MbusDevice, MbusSpec
from drivers.mbus_master import MbusLine, line_time_s

BAUD = 2400


async def _measure(port: str, polls: int) -> dict[str, float]:
    line = MbusLine(port, BAUD)
    dev = MbusDevice(MbusSpec("hm", "heat_meter", port, BAUD, address=1), SystemClock(), line)
    try:
        first = await dev.read()  # SND_NKE + REQ_UD2: the start, not the steady state
        if not first.ok:
            raise RuntimeError(f"the simulated meter did not answer: {first.error}")
        req0 = dev.counters["requests"]
        walls: list[float] = []
        own: list[float] = []
        for _ in range(polls):
            tx, rx = line.tx_bytes, line.rx_bytes
            t0 = time.perf_counter()
            r = await dev.read()
            walls.append(time.perf_counter() - t0)
            if not r.ok:
                raise RuntimeError(f"a poll failed: {r.error}")
            own.append(line_time_s(line.tx_bytes - tx + line.rx_bytes - rx, BAUD))
        return {
            "requests_per_poll": round((dev.counters["requests"] - req0) / polls, 3),
            "line_overhead": round(sum(walls) / sum(own), 3),
            "poll_s": round(statistics.median(walls), 4),
            "bytes_s": round(statistics.median(own), 4),
            "polls": polls,
        }
    finally:
        await dev.close()


def measure_line(polls: int = 20) -> dict[str, float]:
    sim = subprocess.Popen(
        [str(Path(sys.executable).parent / "dh-sim"), "--mbus-pty", "--mbus-baud", str(BAUD)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        port = json.loads(sim.stdout.readline())["mbus"]
        return asyncio.run(_measure(port, polls))
    finally:
        sim.terminate()
        sim.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=20)
    args = ap.parse_args(argv)
    f = measure_line(args.polls)
    print(
        f"{f['polls']} polls at {BAUD} baud: {f['requests_per_poll']} requests a poll "
        f"(target 1.0); wall {f['poll_s']} s a poll vs {f['bytes_s']} s of bytes: "
        f"line overhead {f['line_overhead']} (target <= 1.15)",
        flush=True,
    )
    print(json.dumps(f))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
