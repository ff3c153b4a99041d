"""Profile-driven Modbus device: one poll -> one typed ``Reading``.

``Device.read`` reads the profile's registers in the blocks ``plan_reads`` coalesces
(at most 125 registers a request), decodes them with ``decode_block`` (which flags
values outside the profile's physical range as IMPLAUSIBLE and sensor-fault raw values
as FAULT, so they never pass as good), and stamps the reading with the injected clock.
It never raises for bus errors: a poll whose block still fails after the retries is
``Reading(ok=False, values={}, error=...)``. One exception: a block made only of
registers marked ``confirmed = false`` that the device rejects as illegal (exception
1/2/3) is left out of the reading (logged), so an unverified map guess cannot stop the
confirmed values from being read.

Retries: each failed request (timeout, CRC error, bad frame, connection error, or an
exception response other than 1/2/3, which a retry cannot fix) is repeated up to
``spec.retries`` times with exponential backoff (``BACKOFF_S`` doubling, capped at
``BACKOFF_MAX_S``); the bus lock is released between attempts, so other devices on the
line are served meanwhile. Every attempt is a request and counted.

Health rule (pure, ``drivers.health.next_health``, shared with M-Bus devices):

* OK after a successful poll;
* DEGRADED after 1 or more consecutive failed polls;
* OFFLINE after ``OFFLINE_AFTER`` (3) consecutive failed polls, or when the last
  success (or, before any success, the device's creation) is more than
  ``OFFLINE_AFTER_S`` (60 s, monotonic) ago at a failed poll;
* back to OK on the next successful poll.
A new device is OFFLINE until its first successful poll. Writes do not change health.

Counters (``Device.counters``): ``polls``, ``polls_failed``, ``requests`` (Modbus
requests sent, retries included), ``ok`` (requests answered correctly), ``timeouts``,
``crc_errors``, ``bad_frames``, ``exceptions``, ``connect_errors``, ``retries``,
``implausible`` (decoded values not of GOOD quality), ``writes``, ``write_errors``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar, Union, overload

from drivers.errors import DriverError, TransportError
from drivers.health import OFFLINE_AFTER, OFFLINE_AFTER_S, HealthState, next_health
from drivers.modbus import Bus, ExceptionResponse, RtuBus, TcpBus
from drivers.profile import Profile, ReadBlock, decode_block, encode, plan_reads
from drivers.types import Clock, Health, Quality, Reading, Value

if TYPE_CHECKING:
    from drivers.mbus_device import MbusDevice, MbusSpec
    from drivers.mbus_master import MbusLine

__all__ = [
    "Device",
    "DevicePool",
    "DeviceSpec",
    "DriverError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_S = 0.05
BACKOFF_MAX_S = 1.0

COUNTER_NAMES = (
    "polls",
    "polls_failed",
    "requests",
    "ok",
    "timeouts",
    "crc_errors",
    "bad_frames",
    "exceptions",
    "connect_errors",
    "retries",
    "implausible",
    "writes",
    "write_errors",
)


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    role: str
    profile: Profile
    transport: Literal["tcp", "rtu"]
    host: str = "127.0.0.1"
    port: int | str = 502  # tcp port, or serial device path for rtu
    unit: int = 1
    timeout_s: float = 1.0
    retries: int = 2
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    rs485: bool = False


def backoff_s(attempt: int) -> float:
    """Pause before retry ``attempt`` (1, 2, ...)."""
    return float(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)))


# --- buses ---------------------------------------------------------------------------------


# --- block decoding ------------------------------------------------------------------------

_FMT = {"u16": "H", "s16": "h", "u32": "I", "s32": "i", "f32": "f"}

# ``Value`` is a frozen slots dataclass: its ``__init__`` sets each field through
# ``object.__setattr__``; the decoder's hot loop sets the three slots directly (the same
# object, about half the cost)
_new_object = object.__new__
_set_value = Value.__dict__["value"].__set__
_set_unit = Value.__dict__["unit"].__set__
_set_quality = Value.__dict__["quality"].__set__


class BlockDecoder:
    """``decode_block`` for one block with one precompiled ``struct`` format: the same
    values and qualities (tests check equality on random words), about 3x less CPU.
    Blocks with little-endian word order fall back to ``decode_block``.

    An integer register whose raw value is the one of the previous poll gets the previous
    (immutable) ``Value`` again: the value and its quality are functions of the raw value
    alone, and most registers of a meter (identity, units, status, slow counters) do not
    change from one poll to the next. Float registers are always decoded (-0.0 == 0.0)."""

    def __init__(self, block: ReadBlock) -> None:
        self.block = block
        self.fast = all(r.count == 1 or r.word_order == "big" for r in block.registers)
        self.regs = sorted(block.registers, key=lambda r: r.address)
        # only the words the registers use are picked (a block spans gaps) and packed
        need = [r.address - block.address + k for r in self.regs for k in range(r.count)]
        self.pick = operator.itemgetter(*need, *need[:1]) if need else None  # always a tuple
        self.words = struct.Struct(f">{len(need) + 1}H")
        self.struct = struct.Struct(">" + "".join(_FMT[r.type] for r in self.regs) + "2x")
        inf = math.inf
        # per register, what the hot loop needs, as plain locals (no attribute lookups)
        self.plan = [
            (
                r.name,
                r.scale,
                r.offset,
                r.unit,
                r.raw_range is not None,
                *(r.raw_range or (-inf, inf)),
                *(r.range or (-inf, inf)),
            )
            for r in self.regs
        ]
        # per register: (raw, Value, not GOOD) of the last decode, for integer registers
        self.cacheable = [r.type != "f32" for r in self.regs]
        self.last: list[tuple[int | float, Value, int] | None] = [None] * len(self.regs)

    def __call__(self, words: list[int]) -> dict[str, Value]:
        out: dict[str, Value] = {}
        self.into(words, out)
        return out

    def into(self, words: list[int], out: dict[str, Value]) -> int:
        """Decode into ``out``; returns how many of the values are not of GOOD quality."""
        if not self.fast:
            values = decode_block(self.block, words)
            out.update(values)
            return sum(1 for v in values.values() if v.quality is not Quality.GOOD)
        if len(words) < self.block.count:
            raise ValueError(f"short read: {len(words)} of {self.block.count} registers")
        if self.pick is None:
            return 0
        raws = self.struct.unpack(self.words.pack(*self.pick(words)))
        good, fault, implausible, isfinite = (
            Quality.GOOD,
            Quality.FAULT,
            Quality.IMPLAUSIBLE,
            math.isfinite,
        )
        new, set_value, set_unit, set_quality = _new_object, _set_value, _set_unit, _set_quality
        last, cacheable = self.last, self.cacheable
        bad = 0
        for i, ((name, scale, offset, unit, has_raw, rlo, rhi, lo, hi), raw) in enumerate(
            zip(self.plan, raws, strict=True)
        ):
            prev = last[i]
            if prev is not None and prev[0] == raw:
                out[name] = prev[1]
                bad += prev[2]
                continue
            f = float(raw)
            val = f * scale + offset
            if has_raw and not rlo <= f <= rhi:
                q, b = fault, 1
            elif lo <= val <= hi and isfinite(val):
                q, b = good, 0
            else:
                q, b = implausible, 1
            v = new(Value)
            set_value(v, val)
            set_unit(v, unit)
            set_quality(v, q)
            out[name] = v
            bad += b
            if cacheable[i]:
                last[i] = (raw, v, b)
        return bad


def make_bus(spec: DeviceSpec) -> Bus:
    if spec.transport == "tcp":
        if not isinstance(spec.port, int):
            raise ValueError(f"{spec.name}: tcp port must be an integer")
        return TcpBus(spec.host, spec.port)
    if spec.transport == "rtu":
        return RtuBus(
            str(spec.port),
            baudrate=spec.baudrate,
            parity=spec.parity,
            stopbits=spec.stopbits,
            rs485=spec.rs485,
        )
    raise ValueError(f"{spec.name}: unknown transport {spec.transport!r}")


def bus_key(spec: DeviceSpec) -> tuple[str, ...]:
    if spec.transport == "tcp":
        return ("tcp", spec.host, str(spec.port))
    return ("rtu", str(spec.port))


# --- device --------------------------------------------------------------------------------


class Device:
    """One Modbus device described by a profile; see the module doc."""

    def __init__(
        self,
        spec: DeviceSpec,
        clock: Clock,
        bus: Bus | None = None,
        *,
        offline_after: int = OFFLINE_AFTER,
        offline_after_s: float = OFFLINE_AFTER_S,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self._own_bus = bus is None
        self.bus: Bus = bus if bus is not None else make_bus(spec)
        self.blocks: list[ReadBlock] = plan_reads(spec.profile.registers, spec.profile.max_gap)
        self.decoders = [BlockDecoder(b) for b in self.blocks]
        # what each read is called in errors, made once (not per poll)
        self.labels = [f"read {b.function} {b.address}+{b.count}" for b in self.blocks]
        self.offline_after = offline_after
        self.offline_after_s = offline_after_s
        self._health = HealthState(Health.OFFLINE, 0, clock.mono())
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.last_error: str | None = None

    @property
    def health(self) -> Health:
        return self._health.health

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rollover(self) -> dict[str, float]:
        return {r.name: r.rollover for r in self.spec.profile.registers if r.rollover}

    async def _attempts(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run one bus operation with the spec's retries; raises the last TransportError."""
        self.counters["requests"] += 1
        try:
            result = await op()
        except TransportError as e:
            return await self._retry(e, op, what)
        self.counters["ok"] += 1
        return result

    async def _retry(self, error: TransportError, op: Callable[[], Awaitable[T]], what: str) -> T:
        """``_attempts`` once its first attempt (counted as a request) failed with ``error``:
        count the failure, then retry as the spec says; raises the last TransportError."""
        c = self.counters
        attempt = 0
        while True:
            c[error.kind] += 1
            self.last_error = f"{what}: {error}"
            if error.kind in ("crc_errors", "bad_frames"):
                log.warning("%s: %s: bad frame skipped: %s", self.spec.name, what, error)
            else:
                log.debug("%s: %s: %s", self.spec.name, what, error)
            if not error.retryable or attempt >= self.spec.retries:
                raise error
            attempt += 1
            c["retries"] += 1
            await asyncio.sleep(backoff_s(attempt))
            c["requests"] += 1
            try:
                result = await op()
            except TransportError as e:
                error = e
                continue
            c["ok"] += 1
            return result

    async def read(self) -> Reading:
        """Poll every register of the profile once; never raises for bus errors."""
        spec = self.spec
        c = self.counters
        c["polls"] += 1
        values: dict[str, Value] = {}
        error: str | None = None
        bus, unit, timeout = self.bus, spec.unit, spec.timeout_s
        bad = 0
        for block, decoder, label in zip(self.blocks, self.decoders, self.labels, strict=True):
            # the first attempt inline (no closure, no extra coroutine); retries in _retry
            c["requests"] += 1
            try:
                try:
                    words = await bus.read(
                        unit, block.function, block.address, block.count, timeout
                    )
                except TransportError as first:
                    words = await self._retry(
                        first,
                        lambda b=block: bus.read(  # type: ignore[misc]
                            unit, b.function, b.address, b.count, timeout
                        ),
                        label,
                    )
                else:
                    c["ok"] += 1
            except ExceptionResponse as e:
                if not e.retryable and not any(r.confirmed for r in block.registers):
                    # a map guess the device rejects: leave those values out, keep the rest
                    log.warning(
                        "%s: unconfirmed registers at %d skipped: %s", spec.name, block.address, e
                    )
                    continue
                error = f"{type(e).__name__}: {e}"
                break
            except TransportError as e:
                error = f"{type(e).__name__}: {e}"
                break
            bad += decoder.into(words, values)
        clock = self.clock
        mono = clock.mono()
        ok = error is None
        self._health = next_health(self._health, ok, mono, self.offline_after, self.offline_after_s)
        if not ok:
            c["polls_failed"] += 1
            values = {}
            bad = 0
        if bad:
            c["implausible"] += bad
            log.info(
                "%s: flagged %s",
                spec.name,
                ", ".join(f"{k}={v.value:g} {v.quality}" for k, v in values.items() if not v.good),
            )
        # a heat meter whose profile names a `serial` register: its identity (meter swaps)
        serial = values.get("serial")
        meter_id = (
            str(int(serial.value))
            if spec.role == "heat_meter" and serial is not None and serial.good
            and math.isfinite(serial.value)
            else None
        )  # fmt: skip
        return Reading(
            device=spec.name,
            role=spec.role,
            ts=clock.wall(),
            mono=mono,
            synced=clock.synced(),
            ok=ok,
            values=values,
            error=error,
            meter_id=meter_id,
        )

    async def write(self, name: str, value: float) -> None:
        """Write one writable holding register (FC6 one word, FC16 two); raises
        DriverError when the register is not writable, the value is outside its range,
        or the write failed after the retries."""
        spec = self.spec
        try:
            reg = spec.profile.register(name)
        except KeyError as e:
            raise DriverError(f"{spec.name}: no register {name!r}") from e
        if not reg.writable or reg.function != "holding":
            raise DriverError(f"{spec.name}: register {name!r} is not writable")
        if reg.range is not None and not reg.range[0] <= value <= reg.range[1]:
            raise DriverError(f"{spec.name}: {name}={value} outside {reg.range}")
        words = encode(reg, value)
        self.counters["writes"] += 1
        bus = self.bus
        try:
            await self._attempts(
                lambda: bus.write(spec.unit, reg.address, words, spec.timeout_s),
                f"write {name}",
            )
        except TransportError as e:
            self.counters["write_errors"] += 1
            raise DriverError(f"{spec.name}: write {name}={value} failed: {e}") from e

    async def close(self) -> None:
        if self._own_bus:
            await self.bus.close()


AnyDevice = Union[Device, "MbusDevice"]


class DevicePool:
    """Creates devices, sharing one bus (and its lock) per serial port and per TCP
    host:port. Devices on one serial port must agree on its line settings. Wired M-Bus
    meters on one port share one ``MbusLine`` (and its lock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.buses: dict[tuple[str, ...], Bus | MbusLine] = {}
        self.devices: dict[str, AnyDevice] = {}

    def _add_mbus(self, spec: MbusSpec) -> MbusDevice:
        from drivers.mbus_device import MbusDevice
        from drivers.mbus_master import MbusLine

        key = ("rtu", spec.port)
        line = self.buses.get(key)
        if line is None:
            line = self.buses[key] = MbusLine(spec.port, spec.baudrate)
        elif not isinstance(line, MbusLine) or line.baudrate != spec.baudrate:
            raise ValueError(
                f"device {spec.name!r}: M-Bus at {spec.baudrate} baud on {spec.port}, "
                "which another device uses differently"
            )
        dev = MbusDevice(spec, self.clock, line)
        self.devices[spec.name] = dev
        return dev

    @overload
    def add(self, spec: DeviceSpec) -> Device: ...
    @overload
    def add(self, spec: MbusSpec) -> MbusDevice: ...
    @overload
    def add(self, spec: DeviceSpec | MbusSpec) -> AnyDevice: ...

    def add(self, spec: DeviceSpec | MbusSpec) -> AnyDevice:
        if spec.name in self.devices:
            raise ValueError(f"device {spec.name!r} added twice")
        if not isinstance(spec, DeviceSpec):
            return self._add_mbus(spec)
        key = bus_key(spec)
        found = self.buses.get(key)
        if found is None:
            bus: Bus = make_bus(spec)
            self.buses[key] = bus
        elif not isinstance(found, Bus):
            raise ValueError(f"device {spec.name!r}: {spec.port} is an M-Bus line")
        else:
            bus = found
        if isinstance(bus, RtuBus):
            want = (spec.baudrate, spec.parity, spec.stopbits, spec.rs485)
            if bus.settings() != want:
                raise ValueError(
                    f"device {spec.name!r}: line settings {want} differ from "
                    f"{bus.settings()} of another device on {bus.path}"
                )
        dev = Device(spec, self.clock, bus)
        self.devices[spec.name] = dev
        return dev

    async def close(self) -> None:
        for bus in self.buses.values():
            try:
                await bus.close()
            except Exception as e:  # closing must not stop closing the others
                log.warning("closing %s: %s", bus.key, e)
        self.buses.clear()
