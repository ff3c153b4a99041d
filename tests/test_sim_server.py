"""SimServer in-process over real sockets and a real pty, read by plain clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import serial
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from simulator.rtu import crc_ok, with_crc
from simulator.scenarios import get_scenario
from simulator.server import SimServer
from tests.support.aio import run

T = TypeVar("T")

TRUTH_FIELDS = {
    "t",
    "energy_kwh",
    "volume_m3",
    "flow_m3h",
    "demand_flow_m3h",
    "supply_c",
    "return_c",
    "dp_kpa",
    "valve_limit_pct",
}


class FastClock:
    """Simulated time running ``speed`` times faster than the monotonic clock."""

    def __init__(self, speed: float, t0: float = 1_700_000_000.0) -> None:
        self.speed = speed
        self.t0 = t0
        self.m0 = time.monotonic()

    def wall(self) -> float:
        return self.t0 + (time.monotonic() - self.m0) * self.speed

    def mono(self) -> float:
        return time.monotonic()

    def synced(self) -> bool:
        return True


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def test_tcp_live_values_writes_and_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"

    async def main() -> None:
        async with SimServer(
            "steady", seed=1, truth_path=str(truth), step_s=0.05, clock=FastClock(20.0)
        ) as sim:
            assert sim.tcp_address is not None and sim.tcp_address[1] > 0
            assert sim.rtu_path is None
            host, port = sim.tcp_address

            def client() -> tuple[list[int], list[int], list[int]]:
                c: Any = ModbusTcpClient(host, port=port, timeout=1.0, retries=0)
                assert c.connect()
                try:
                    e1 = c.read_holding_registers(100, count=2, device_id=1).registers
                    time.sleep(0.5)  # 10 simulated seconds
                    e2 = c.read_holding_registers(100, count=2, device_id=1).registers
                    w = c.write_registers(0, [123, 5], device_id=3)
                    assert not w.isError()
                    a = c.read_holding_registers(0, count=2, device_id=3).registers
                    return e1, e2, a
                finally:
                    c.close()

            e1, e2, a = await in_thread(client)
            energy1 = (e1[0] << 16 | e1[1]) / 10
            energy2 = (e2[0] << 16 | e2[1]) / 10
            assert energy2 > energy1  # ~55 kW for ~10 s: ~0.15 kWh
            assert a == [123, 5]
            assert sim.plant.valve_limit_pct == 12.3
            await asyncio.sleep(0.6)  # > 5 simulated s without a refresh
            assert sim.plant.valve_limit_pct == 100.0
            assert not sim.plant.limit_active

    run(main())
    lines = [json.loads(x) for x in truth.read_text().splitlines()]
    assert len(lines) >= 20
    ts = [ln["t"] for ln in lines]
    assert all(b - a == 1 for a, b in itertools.pairwise(ts))
    assert all(float(t).is_integer() for t in ts)
    for ln in lines:
        assert set(ln) >= TRUTH_FIELDS
        assert "faults" in ln
    assert any(ln["valve_limit_pct"] == 12.3 for ln in lines)
    assert lines[-1]["valve_limit_pct"] == 100.0
    assert lines[-1]["energy_kwh"] > lines[0]["energy_kwh"]


def _classify_tcp(c: Any, unit: int, fc: int, addr: int, count: int) -> str:
    try:
        if fc == 3:
            r = c.read_holding_registers(addr, count=count, device_id=unit)
        else:
            r = c.read_input_registers(addr, count=count, device_id=unit)
    except Exception:  # pymodbus raises ModbusIOException on no answer
        return "timeout"
    if r.isError():
        return "exception"
    if unit == 1 and r.registers[0] == 18500:
        return "absurd"
    if unit == 2 and r.registers[0] < 3500:
        return "absurd"
    return "ok"


def test_tcp_faults_match_injected() -> None:
    params = get_scenario("faults", p_timeout=0.08, p_exception=0.08, p_absurd=0.08)

    async def main() -> None:
        async with SimServer("faults", seed=3, params=params) as sim:
            assert sim.tcp_address is not None
            host, port = sim.tcp_address

            def client() -> Counter[str]:
                seen: Counter[str] = Counter()
                c: Any = ModbusTcpClient(host, port=port, timeout=0.15, retries=0)
                assert c.connect()
                try:
                    for i in range(120):
                        if not c.connected:
                            c.connect()
                        unit, fc, addr, count = ((1, 3, 800, 1), (2, 4, 0, 1))[i % 2]
                        seen[_classify_tcp(c, unit, fc, addr, count)] += 1
                finally:
                    c.close()
                return seen

            seen = await in_thread(client)
            for kind in ("timeout", "exception", "absurd"):
                assert seen[kind] == sim.faults[kind], (kind, seen, sim.faults)
                assert seen[kind] > 0, (kind, seen)
            assert sim.faults["bad_crc"] == 0

    run(main())


def _rtu_exchange(port: serial.Serial, frame: bytes) -> bytes:
    port.reset_input_buffer()
    port.write(frame)
    first = bytes(port.read(3))
    if len(first) < 3:
        return first
    if first[1] & 0x80:
        return first + bytes(port.read(2))
    return first + bytes(port.read(first[2] + 2))


def test_rtu_pty_plain_client_and_faults(tmp_path: Path) -> None:
    truth = tmp_path / "t.jsonl"

    async def main() -> Counter[str]:
        async with SimServer(
            "faults", seed=5, tcp=None, rtu_pty=True, truth_path=str(truth)
        ) as sim:
            assert sim.tcp_address is None
            assert sim.rtu_path is not None and sim.rtu_path.startswith("/dev/pts/")
            path = sim.rtu_path

            def pymodbus_client() -> int:
                ok = 0
                c: Any = ModbusSerialClient(path, baudrate=19200, timeout=0.2, retries=0)
                assert c.connect()
                try:
                    for _ in range(10):
                        try:
                            r = c.read_holding_registers(0, count=2, device_id=3)
                        except Exception:
                            continue
                        if not r.isError():
                            assert r.registers == [1000, 60]
                            ok += 1
                finally:
                    c.close()
                return ok

            assert await in_thread(pymodbus_client) >= 5

            def raw_client() -> Counter[str]:
                seen: Counter[str] = Counter()
                with serial.Serial(path, 19200, timeout=0.15) as port:
                    for i in range(300):
                        unit = 1 if i % 2 == 0 else 2
                        req = (
                            struct.pack(">BBHH", 1, 3, 800, 1)
                            if unit == 1
                            else struct.pack(">BBHH", 2, 4, 0, 1)
                        )
                        rep = _rtu_exchange(port, with_crc(req))
                        if not rep:
                            seen["timeout"] += 1
                        elif not crc_ok(rep):
                            seen["bad_crc"] += 1
                        elif rep[1] & 0x80:
                            seen["exception"] += 1
                        else:
                            word = struct.unpack(">H", rep[3:5])[0]
                            bad = word == 18500 if unit == 1 else word < 3500
                            seen["absurd" if bad else "ok"] += 1
                return seen

            before = Counter(sim.faults)
            seen = await in_thread(raw_client)
            for kind in ("timeout", "bad_crc", "exception", "absurd"):
                assert seen[kind] == sim.faults[kind] - before[kind], (kind, seen, sim.faults)
                assert seen[kind] > 0, (kind, seen)
            assert sim.rtu is not None and sim.rtu.rx_bad_crc == 0

        return Counter(sim.faults)

    injected: Counter[str] = run(main())
    lines = [json.loads(x) for x in truth.read_text().splitlines()]
    total: Counter[str] = Counter()
    for ln in lines:
        total.update(ln["faults"])
    assert any(ln["faults"] for ln in lines)
    assert all(total[k] <= injected[k] for k in total)  # the last partial second is not out
