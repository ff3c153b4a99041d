"""Drivers against the simulator over real sockets and real pseudo-terminals."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import tty
from collections.abc import Callable
from typing import TypeVar

import pytest

from drivers.clock_sys import SystemClock
from drivers.device import Device, DevicePool, DeviceSpec, DriverError
from drivers.modbus import RtuBus, response_length
from drivers.profile import load_profile
from drivers.types import Health, Quality, Reading
from simulator.rtu import request_length
from simulator.server import SimServer
from tests.support.aio import run

T = TypeVar("T")
UNITS = {1: "sim-heat-meter", 2: "sim-dp-sensor", 3: "sim-actuator"}


def health(dev: Device) -> Health:
    return dev.health  # a call, so mypy does not narrow it across awaits


def spec(
    name: str, unit: int, transport: str, where: str | int, timeout_s: float = 0.5, **kw: object
) -> DeviceSpec:
    p = load_profile(UNITS[unit])
    args: dict[str, object] = {"unit": unit, "timeout_s": timeout_s}
    if transport == "tcp":
        args.update(transport="tcp", port=int(where))
    else:
        args.update(transport="rtu", port=str(where), baudrate=115200)
    args.update(kw)
    return DeviceSpec(name, p.role, p, **args)  # type: ignore[arg-type]


def assert_never_good_outside_range(r: Reading, dev: Device) -> None:
    for reg in dev.spec.profile.registers:
        v = r.values.get(reg.name)
        if v is None or reg.range is None:
            continue
        inside = math.isfinite(v.value) and reg.range[0] <= v.value <= reg.range[1]
        if not inside:
            assert v.quality is not Quality.GOOD, (reg.name, v)


# --- every role over TCP and RTU --------------------------------------------------------------


def test_every_role_over_tcp_and_rtu() -> None:
    async def main() -> None:
        async with SimServer(scenario="steady", seed=3, rtu_pty=True) as sim:
            assert sim.tcp_address is not None and sim.rtu_path is not None
            pool = DevicePool(SystemClock())
            try:
                devs = {}
                for u in UNITS:
                    devs[("tcp", u)] = pool.add(spec(f"t{u}", u, "tcp", sim.tcp_address[1]))
                    devs[("rtu", u)] = pool.add(spec(f"r{u}", u, "rtu", sim.rtu_path))
                assert len(pool.buses) == 2  # one TCP connection, one serial line
                for (tr, u), dev in devs.items():
                    t0 = time.time()
                    r = await dev.read()
                    assert r.ok, (tr, u, r.error)
                    assert r.device == dev.name and r.role == dev.spec.role
                    assert t0 <= r.ts <= time.time() and r.synced
                    names = {reg.name for reg in dev.spec.profile.registers}
                    assert set(r.values) == names
                    assert all(v.good for v in r.values.values()), r.values
                    expect = sim.bank.values(u)
                    for name in ("energy_kwh", "volume_m3", "flow_m3h", "supply_c", "dp_kpa"):
                        if name in r.values:
                            reg = dev.spec.profile.register(name)
                            assert r.values[name].unit == reg.unit
                            # the plant moves between the read and now: loose bound
                            assert r.values[name].value == pytest.approx(
                                expect[name], rel=0.05, abs=0.5
                            ), name
                    assert health(dev) is Health.OK
                    assert dev.counters["requests"] == dev.counters["ok"] == len(dev.blocks)
                # heat meter: the profile's registers need several coalesced reads, not 13
                hm = devs[("rtu", 1)]
                assert 1 < len(hm.blocks) < len(hm.spec.profile.registers)
                assert all(b.count <= 125 for b in hm.blocks)
                assert sim.rtu is not None and sim.rtu.rx_bad_crc == 0
            finally:
                await pool.close()

    run(main(), 120)


# --- actuator write read back ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_actuator_limit_write_read_back(transport: str) -> None:
    async def main() -> None:
        async with SimServer(scenario="steady", seed=4, rtu_pty=transport == "rtu") as sim:
            assert sim.tcp_address is not None
            where = sim.tcp_address[1] if transport == "tcp" else str(sim.rtu_path)
            dev = Device(spec("act", 3, transport, where), SystemClock())
            try:
                await dev.write("limit_pct", 37.5)
                r = await dev.read()
                assert r.ok and r.values["limit_pct"].value == pytest.approx(37.5)
                assert r.values["limit_active"].value == 1.0
                assert sim.plant.valve_limit_pct == pytest.approx(37.5)
                await dev.write("watchdog_s", 120)
                assert (await dev.read()).values["watchdog_s"].value == 120
                with pytest.raises(DriverError, match="not writable"):
                    await dev.write("position_pct", 10)
                with pytest.raises(DriverError, match="outside"):
                    await dev.write("limit_pct", 140)
                with pytest.raises(DriverError, match="no register"):
                    await dev.write("nope", 1)
                assert dev.counters["writes"] == 2 and dev.counters["write_errors"] == 0
            finally:
                await dev.close()

    run(main(), 120)


# --- faults: counters match what the simulator injected ---------------------------------------


FAULT_RUN_S = 20.0


def test_faults_scenario_counters_match_injected() -> None:
    """All three units polled back to back for FAULT_RUN_S over RTU (one shared line) and
    over TCP, each transport against its own simulator so its fault counter is only ours.
    The scenario injects ~3 % each of timeouts, bad CRCs (RTU), exception responses and
    absurd values; 20 s gives a few hundred requests per transport, enough for every
    kind to occur many times, so the equalities below are not vacuous."""

    async def poll_all(devs: list[Device], until: float, seen: list[Reading]) -> None:
        async def loop(d: Device) -> None:
            while time.monotonic() < until:
                r = await d.read()
                seen.append(r)
                if r.ok:
                    assert_never_good_outside_range(r, d)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(loop(d) for d in devs))

    async def main() -> None:
        async with (
            SimServer(scenario="faults", seed=11, tcp=None, rtu_pty=True) as srtu,
            SimServer(scenario="faults", seed=12) as stcp,
        ):
            assert srtu.rtu_path is not None and stcp.tcp_address is not None
            pool = DevicePool(SystemClock())
            rtu = [pool.add(spec(f"r{u}", u, "rtu", srtu.rtu_path, 0.15)) for u in UNITS]
            tcp = [pool.add(spec(f"t{u}", u, "tcp", stcp.tcp_address[1], 0.15)) for u in UNITS]
            seen: list[Reading] = []
            until = time.monotonic() + FAULT_RUN_S
            try:
                await asyncio.gather(poll_all(rtu, until, seen), poll_all(tcp, until, seen))
            finally:
                await pool.close()

            def total(devs: list[Device], key: str) -> int:
                return sum(d.counters[key] for d in devs)

            for devs, sim, transport in ((rtu, srtu, "rtu"), (tcp, stcp, "tcp")):
                f = sim.faults
                assert f["timeout"] >= 3 and f["exception"] >= 3, (transport, f)
                assert total(devs, "timeouts") == f["timeout"], (transport, f)
                assert total(devs, "exceptions") == f["exception"], (transport, f)
                assert total(devs, "crc_errors") == f["bad_crc"], (transport, f)
                assert total(devs, "bad_frames") == 0
                assert total(devs, "requests") == sim.bank.requests
                assert total(devs, "requests") == total(devs, "ok") + sum(
                    total(devs, k) for k in ("timeouts", "exceptions", "crc_errors")
                )
                # every absurd answer is flagged, never good; some absurd draws only hit
                # registers whose corrupted value is still plausible (power 0 kW)
                assert total(devs, "implausible") > 0
                assert total(devs, "retries") > 0
                for d in devs:
                    assert d.counters["polls"] > 20
            assert srtu.faults["bad_crc"] >= 3
            assert stcp.faults["bad_crc"] == 0  # TCP has no CRC
            assert len(seen) > 100
            flagged = sum(1 for r in seen if any(not v.good for v in r.values.values()))
            assert 0 < flagged <= srtu.faults["absurd"] + stcp.faults["absurd"]
            print("rtu faults", dict(srtu.faults), {k: total(rtu, k) for k in rtu[0].counters})
            print("tcp faults", dict(stcp.faults), {k: total(tcp, k) for k in tcp[0].counters})

    run(main(), 120)


# --- one request at a time on a shared RTU line -------------------------------------------------


class PtyTap:
    """A second pty between the driver and the simulator's pty, recording every chunk
    of bytes in each direction in arrival order (an independent observer of the line)."""

    def __init__(self, target: str) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.target = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.target)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._pump, self.master, self.target, "req")
        loop.add_reader(self.target, self._pump, self.target, self.master, "rsp")

    def _pump(self, src: int, dst: int, tag: str) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(src, 4096)
            self.events.append((tag, data))
            os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self.master, self.target):
            loop.remove_reader(fd)
        for fd in (self.master, self.slave, self.target):
            os.close(fd)

    def overlaps(self) -> int:
        """Requests sent while an earlier request's answer was still incomplete."""
        bad = 0
        req = bytearray()
        rsp = bytearray()
        waiting = False
        for tag, data in self.events:
            if tag == "req":
                req += data
                while (n := request_length(req)) is not None and 0 < n <= len(req):
                    del req[:n]
                    if waiting:  # a whole request sent before the last answer ended
                        bad += 1
                    waiting = True
            else:
                rsp += data
                while (n := response_length(rsp)) is not None and 0 < n <= len(rsp):
                    del rsp[:n]
                    waiting = False
        return bad


def test_devices_on_one_rtu_line_never_interleave() -> None:
    async def hammer(devs: list[Device], rounds: int) -> list[Reading]:
        out: list[Reading] = []
        for _ in range(rounds):
            out += await asyncio.gather(*(d.read() for d in devs))
        return out

    async def main() -> tuple[int, int]:
        async with SimServer(scenario="steady", seed=5, tcp=None, rtu_pty=True) as sim:
            assert sim.rtu_path is not None
            tap = PtyTap(sim.rtu_path)
            try:
                pool = DevicePool(SystemClock())
                devs = [pool.add(spec(f"d{u}", u, "rtu", tap.path)) for u in UNITS]
                assert len(pool.buses) == 1
                readings = await hammer(devs, 30)
                await pool.close()
                assert all(r.ok for r in readings), [r.error for r in readings if not r.ok]
                shared = tap.overlaps()
                assert sum(1 for t, _ in tap.events if t == "req") >= 90
                # negative control: the same devices each with its own bus (no shared
                # lock) do overlap on the line, so the observer can see a violation
                solo = [Device(d.spec, SystemClock()) for d in devs]
                for d in solo:  # open each port first, one after another
                    await d.read()
                tap.events.clear()
                await hammer(solo, 3)
                for d in solo:
                    await d.close()
                return shared, tap.overlaps()
            finally:
                tap.close()

    shared, unshared = run(main(), 120)
    assert shared == 0
    assert unshared > 0


# --- failures: bad frames, refused connections, RS-485 mode ------------------------------------


class ScriptedSlave:
    """A pty whose other end answers each request with the next scripted reply."""

    def __init__(self, replies: list[Callable[[bytes], bytes | None]]) -> None:
        self.replies = list(replies)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.buf = bytearray()
        asyncio.get_running_loop().add_reader(self.master, self._on_read)

    def _on_read(self) -> None:
        self.buf += os.read(self.master, 4096)
        n = request_length(self.buf)
        if n is None or n < 0 or len(self.buf) < n:
            return
        req = bytes(self.buf[:n])
        del self.buf[:n]
        reply = self.replies.pop(0)(req) if self.replies else None
        if reply:
            os.write(self.master, reply)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


def test_bad_frames_are_counted_and_skipped() -> None:
    from drivers.modbus import rtu_frame

    def words(req: bytes, unit: int | None = None) -> bytes:
        count = int.from_bytes(req[4:6], "big")
        pdu = bytes([req[1], 2 * count]) + b"\x1f\x40" * count  # 8000 uA -> 100 kPa
        return rtu_frame(unit if unit is not None else req[0], pdu)

    def bad_crc(req: bytes) -> bytes:
        f = words(req)
        return f[:-2] + bytes([f[-2] ^ 0x55, f[-1]])

    async def main() -> None:
        slave = ScriptedSlave(
            [
                bad_crc,  # poll 1: CRC error, then a reply from another unit, then good
                lambda req: words(req, unit=9),
                words,
                lambda req: rtu_frame(req[0], bytes([req[1] | 0x80, 2])),  # poll 2: illegal
                lambda req: words(req)[:5],  # poll 3: cut short, then nothing, then nothing
            ]
        )
        dev = Device(spec("dp", 2, "rtu", slave.path, 0.1), SystemClock())
        try:
            r1 = await dev.read()
            assert r1.ok and r1.values["dp_kpa"].value == pytest.approx(100.0)
            c = dev.counters
            assert (c["crc_errors"], c["bad_frames"], c["retries"], c["requests"]) == (1, 1, 2, 3)
            assert health(dev) is Health.OK
            r2 = await dev.read()  # permanent exception: no retry
            assert not r2.ok and r2.values == {} and "exception response 2" in str(r2.error)
            assert c["exceptions"] == 1 and c["requests"] == 4 and health(dev) is Health.DEGRADED
            r3 = await dev.read()
            assert not r3.ok and c["bad_frames"] == 2 and c["timeouts"] == 2
            r4 = await dev.read()
            assert not r4.ok and health(dev) is Health.OFFLINE
            assert c["polls"] == 4 and c["polls_failed"] == 3
        finally:
            await dev.close()
            slave.close()

    run(main(), 120)


def test_unconfirmed_block_rejected_by_device_is_left_out() -> None:
    """Kamstrup profile: the confirmed block is read, the placeholder energy/volume block
    answered with 'illegal data address' is skipped instead of failing the reading."""
    import struct

    from drivers.modbus import rtu_frame

    def confirmed(req: bytes) -> bytes:
        vals = (1.25, 60.0, 80.0, 45.0)  # flow, power, t1, t2 (V2 at 2..3 read through)
        data = struct.pack(">f", vals[0]) + b"\0\0\0\0" + struct.pack(">fff", *vals[1:])
        return rtu_frame(req[0], bytes([3, len(data)]) + data)

    async def main() -> None:
        slave = ScriptedSlave([confirmed, lambda req: rtu_frame(req[0], b"\x83\x02")])
        p = load_profile("kamstrup-multical-603")
        dev = Device(
            DeviceSpec("mc603", p.role, p, "rtu", port=slave.path, timeout_s=0.2), SystemClock()
        )
        try:
            r = await dev.read()
            assert r.ok, r.error
            assert r.values["flow_m3h"].value == 1.25 and r.values["return_c"].value == 45.0
            assert "energy_kwh" not in r.values and dev.counters["exceptions"] == 1
        finally:
            await dev.close()
            slave.close()

    run(main(), 120)


def test_tcp_refused_goes_offline_without_raising() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nobody listens there

    async def main() -> None:
        dev = Device(spec("hm", 1, "tcp", port, 0.2, retries=1), SystemClock())
        try:
            states = []
            for _ in range(3):
                r = await dev.read()
                assert not r.ok and r.error and r.values == {}
                states.append(dev.health)
            assert states == [Health.DEGRADED, Health.DEGRADED, Health.OFFLINE]
            assert dev.counters["connect_errors"] == 6 and dev.counters["retries"] == 3
        finally:
            await dev.close()

    run(main(), 120)


def test_rs485_mode_refused_by_a_pty_is_an_error() -> None:
    async def main() -> None:
        async with SimServer(scenario="steady", seed=6, tcp=None, rtu_pty=True) as sim:
            dev = Device(spec("dp", 2, "rtu", str(sim.rtu_path), 0.2, rs485=True), SystemClock())
            try:
                r = await dev.read()
                assert not r.ok and "RS485" in str(r.error)
                assert dev.counters["connect_errors"] >= 1
            finally:
                await dev.close()
            bus = RtuBus(str(sim.rtu_path), baudrate=9600)
            assert bus.silence_s == pytest.approx(3.5 * 10 / 9600)
            await bus.close()

    run(main(), 120)


def test_pool_rejects_conflicting_line_settings() -> None:
    async def main() -> None:
        pool = DevicePool(SystemClock())
        pool.add(spec("a", 1, "rtu", "/dev/ttyX0"))
        with pytest.raises(ValueError, match="line settings"):
            pool.add(spec("b", 2, "rtu", "/dev/ttyX0", baudrate=19200))
        with pytest.raises(ValueError, match="twice"):
            pool.add(spec("a", 2, "rtu", "/dev/ttyX0"))
        await pool.close()

    run(main(), 120)
