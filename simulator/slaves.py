"""The Modbus slaves of dh-sim: plant state -> register words, writes -> plant.

``SlaveBank`` serves units 1 (heat meter, ``sim-heat-meter``), 2 (pressure-difference
sensor, ``sim-dp-sensor``) and 3 (actuator, ``sim-actuator``) with the register maps of
the shipped profiles, encoded with ``drivers.profile.encode``. It is transport-neutral:
the TCP server (pymodbus) and the RTU responder both call ``read``/``write``, and the
RTU responder uses ``handle_pdu`` for whole request PDUs.

Counters (``counter = true``) show the floor of the plant's exact integral at the
register's resolution, modulo the profile's rollover. Unmapped addresses read as 0
(every address 0..65535 answers, so reads may span gaps).

Faults (scenario ``p_*``, deterministic from the seed, one draw per read request; writes
are never faulted) are counted in ``faults`` exactly when injected:

* ``timeout``: no answer at all;
* ``exception``: exception response, code 6 (server device busy);
* ``bad_crc``: RTU only; the answer's CRC is corrupted (on TCP the draw answers normally);
* ``absurd``: the answer carries impossible values: heat meter alternately an open
  supply sensor (185.00 C, delta T 0, power 0, status 1) or a negative flow; dp sensor a
  broken 4-20 mA loop (2 mA). Counted only when the read covers a corrupted register.
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from drivers.profile import Profile, Register, decode_raw, encode, load_profile
from simulator.plant import Plant

Transport = Literal["tcp", "rtu"]

UNIT_HEAT_METER = 1
UNIT_DP_SENSOR = 2
UNIT_ACTUATOR = 3
PROFILE_NAMES = {
    UNIT_HEAT_METER: "sim-heat-meter",
    UNIT_DP_SENSOR: "sim-dp-sensor",
    UNIT_ACTUATOR: "sim-actuator",
}

EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_ADDRESS = 0x02
EXC_ILLEGAL_VALUE = 0x03
EXC_DEVICE_BUSY = 0x06

FAULT_KINDS = ("timeout", "bad_crc", "exception", "absurd", "counter_reset")

_FN = {3: "holding", 4: "input"}


@dataclass(frozen=True, slots=True)
class Response:
    """What a slave answers: words (read), nothing (``timeout``) or an exception code."""

    words: tuple[int, ...] = ()
    exception: int | None = None
    timeout: bool = False
    bad_crc: bool = False


class SlaveBank:
    """Register images of the three simulated devices over one plant."""

    def __init__(
        self,
        plant: Plant,
        faults: Counter[str] | None = None,
        profiles: dict[int, Profile] | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.plant = plant
        self.faults: Counter[str] = faults if faults is not None else plant.faults
        self.profiles = profiles or {u: load_profile(n) for u, n in PROFILE_NAMES.items()}
        self.sync = sync  # called before each request (e.g. advance the plant to now)
        p = plant.params
        self._rng = random.Random(f"{plant.seed}:requests")
        self._p = (p.p_timeout, p.p_bad_crc, p.p_exception, p.p_absurd)
        self._absurd_n = 0
        rng = random.Random(f"{plant.seed}:identity")
        self.serial = 70_000_000 + rng.randrange(1_000_000)
        self._op_hours0 = rng.randrange(5_000, 60_000)
        self.requests = 0

    # --- register values -----------------------------------------------------------

    def values(self, unit: int, absurd: int | None = None) -> dict[str, float]:
        """Scaled register values of ``unit`` now; ``absurd`` picks a corrupted variant."""
        pl = self.plant
        if unit == UNIT_HEAT_METER:
            m = pl.meter.shown  # what the meter shows: lagged, refreshed at its cycle
            v = {
                "device_type": 0x4801,
                "status": pl.meter_model.status,  # meter faults: simulator.meter_faults
                "serial": float(self.serial + 1111 * pl.meter_swaps),  # a new meter, new serial
                "operating_hours": float(self._op_hours0 + int((pl.t - pl.t0) // 3600)),
                "energy_kwh": m["energy_kwh"],
                "energy_unit": 0.0,
                "volume_m3": m["volume_m3"],
                "volume_unit": 1.0,
                "power_kw": m["power_kw"],
                "flow_m3h": m["flow_m3h"],
                "supply_c": m["supply_c"],
                "return_c": m["return_c"],
                "delta_t_c": m["delta_t_c"],
            }
            if absurd == 0:  # open supply sensor
                v.update(supply_c=185.0, delta_t_c=0.0, power_kw=0.0, status=1.0)
            elif absurd == 1:  # negative flow
                v.update(flow_m3h=-abs(m["flow_m3h"]) - 0.5)
            return v
        if unit == UNIT_DP_SENSOR:
            v = {"dp_kpa": pl.dp_kpa, "module_status": 0.0}
            if absurd is not None:  # broken loop: 2 mA
                v["dp_kpa"] = 2000 * 0.025 - 100.0
            return v
        if unit == UNIT_ACTUATOR:
            return {
                "limit_pct": pl.valve_limit_pct,
                "watchdog_s": pl.watchdog_s,
                "position_pct": pl.position_pct,
                "limit_active": 1.0 if pl.limit_active else 0.0,
            }
        raise KeyError(unit)

    @staticmethod
    def _absurd_names(unit: int, variant: int) -> set[str]:
        if unit == UNIT_HEAT_METER:
            return {"supply_c", "delta_t_c", "power_kw", "status"} if variant == 0 else {"flow_m3h"}
        if unit == UNIT_DP_SENSOR:
            return {"dp_kpa"}
        return set()

    @staticmethod
    def _words(reg: Register, value: float) -> list[int]:
        if reg.counter:
            raw = math.floor(value / reg.scale + 1e-9)
            if reg.rollover is not None:
                raw %= round(reg.rollover / reg.scale)
            value = raw * reg.scale + reg.offset
        return encode(reg, value)

    def image(self, unit: int, function: str, absurd: int | None = None) -> dict[int, int]:
        """Address -> word for one unit and register function (holding | input)."""
        vals = self.values(unit, absurd)
        out: dict[int, int] = {}
        for reg in self.profiles[unit].registers:
            if reg.function != function or reg.name not in vals:
                continue
            for i, w in enumerate(self._words(reg, vals[reg.name])):
                out[reg.address + i] = w
        return out

    # --- requests ------------------------------------------------------------------

    def _draw(self, transport: Transport) -> str | None:
        u = self._rng.random()
        acc = 0.0
        for kind, p in zip(("timeout", "bad_crc", "exception", "absurd"), self._p, strict=True):
            acc += p
            if u < acc:
                return None if kind == "bad_crc" and transport != "rtu" else kind
        return None

    def read(
        self, unit: int, fc: int, address: int, count: int, transport: Transport = "tcp"
    ) -> Response:
        """FC 3 (holding) or 4 (input) read, with the scenario's faults."""
        if unit not in self.profiles:
            return Response(timeout=True)  # not our unit: nobody answers (not a fault)
        if self.sync is not None:
            self.sync()
        self.requests += 1
        fn = _FN.get(fc)
        if fn is None:
            return Response(exception=EXC_ILLEGAL_FUNCTION)
        if not 1 <= count <= 125:
            return Response(exception=EXC_ILLEGAL_VALUE)
        if address < 0 or address + count > 0x10000:
            return Response(exception=EXC_ILLEGAL_ADDRESS)
        kind = self._draw(transport)
        if kind == "timeout":
            self.faults["timeout"] += 1
            return Response(timeout=True)
        if kind == "exception":
            self.faults["exception"] += 1
            return Response(exception=EXC_DEVICE_BUSY)
        variant: int | None = None
        if kind == "absurd":
            cand = self._absurd_n % 2
            names = self._absurd_names(unit, cand)
            end = address + count
            if any(
                r.name in names and r.function == fn and r.address < end and r.end > address
                for r in self.profiles[unit].registers
            ):
                variant = cand
                self._absurd_n += 1
                self.faults["absurd"] += 1
        img = self.image(unit, fn, variant)
        words = tuple(img.get(a, 0) for a in range(address, address + count))
        if kind == "bad_crc":
            self.faults["bad_crc"] += 1
            return Response(words=words, bad_crc=True)
        return Response(words=words)

    def write(
        self, unit: int, address: int, values: list[int], transport: Transport = "tcp"
    ) -> Response:
        """FC 6/16 write to holding registers; only writable profile registers accept."""
        del transport  # writes are never faulted
        if unit not in self.profiles:
            return Response(timeout=True)
        if self.sync is not None:
            self.sync()
        self.requests += 1
        if not 1 <= len(values) <= 123:
            return Response(exception=EXC_ILLEGAL_VALUE)
        regs = {
            r.address: r
            for r in self.profiles[unit].registers
            if r.function == "holding" and r.writable
        }
        todo: list[tuple[Register, float]] = []
        i = 0
        while i < len(values):
            reg = regs.get(address + i)
            if reg is None or i + reg.count > len(values):
                return Response(exception=EXC_ILLEGAL_ADDRESS)
            words = [w & 0xFFFF for w in values[i : i + reg.count]]
            raw = decode_raw(reg, words)
            val = raw * reg.scale + reg.offset
            if reg.range is not None and not reg.range[0] <= val <= reg.range[1]:
                return Response(exception=EXC_ILLEGAL_VALUE)
            todo.append((reg, val))
            i += reg.count
        for reg, val in todo:
            self._apply(unit, reg.name, val)
        return Response(words=tuple(values))

    def _apply(self, unit: int, name: str, value: float) -> None:
        if unit == UNIT_ACTUATOR and name == "limit_pct":
            self.plant.write_limit(value)
        elif unit == UNIT_ACTUATOR and name == "watchdog_s":
            self.plant.set_watchdog(value)

    # --- whole PDUs (RTU) -----------------------------------------------------------

    def handle_pdu(
        self, unit: int, pdu: bytes, transport: Transport = "rtu"
    ) -> tuple[bytes | None, bool]:
        """One request PDU (function code + data) -> (response PDU or None for no answer,
        corrupt-the-CRC flag)."""
        fc = pdu[0]
        if fc in (3, 4) and len(pdu) == 5:
            address, count = struct.unpack(">HH", pdu[1:5])
            r = self.read(unit, fc, address, count, transport)
            if r.timeout:
                return None, False
            if r.exception is not None:
                return bytes([fc | 0x80, r.exception]), False
            body = struct.pack(f">B{len(r.words)}H", 2 * len(r.words), *r.words)
            return bytes([fc]) + body, r.bad_crc
        if fc == 6 and len(pdu) == 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            r = self.write(unit, address, [value], transport)
            if r.timeout:
                return None, False
            if r.exception is not None:
                return bytes([fc | 0x80, r.exception]), False
            return pdu, False
        if fc == 16 and len(pdu) >= 6:
            address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            data = pdu[6:]
            if nbytes != 2 * count or len(data) != nbytes or not 1 <= count <= 123:
                return bytes([fc | 0x80, EXC_ILLEGAL_VALUE]), False
            values = list(struct.unpack(f">{count}H", data))
            r = self.write(unit, address, values, transport)
            if r.timeout:
                return None, False
            if r.exception is not None:
                return bytes([fc | 0x80, r.exception]), False
            return bytes([fc]) + struct.pack(">HH", address, count), False
        if unit not in self.profiles:
            return None, False
        return bytes([(fc | 0x80) & 0xFF, EXC_ILLEGAL_FUNCTION]), False
