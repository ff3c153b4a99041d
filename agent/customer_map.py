"""The customer's Modbus register map, version 1 (docs/customer-modbus.md). Pure.

``build_image(snapshot, now, every_s, memory)`` turns the agent's live snapshot
(docs/live-snapshot.md) into register words (address -> 16-bit word); ``answer(image,
pdu)`` turns one Modbus request PDU into the response PDU: function codes 3 and 4 read the
same map, any other function code gets exception 1 (illegal function), an address outside
the map exception 2, a count outside 1..125 exception 3. Nothing here writes anywhere.

Every live value is a record of 4 registers: float32 (big-endian words, high word first),
a quality word (``QUALITY``) and its age in seconds (u16, 65535 = unknown or older).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.finite import number
from agent.protocol import DP_SENSOR, HEAT_METER
from agent.timefmt import parse_time

MAP_VERSION = 1
NAN = float("nan")
AGE_UNKNOWN = 0xFFFF

# quality words
GOOD, IMPLAUSIBLE, FAULT, OFFLINE, STALE, MISSING = 0, 1, 2, 3, 4, 5
QUALITY = {"good": GOOD, "implausible": IMPLAUSIBLE, "fault": FAULT}
HEALTH = {"ok": 0, "degraded": 1, "offline": 2}
STATUS = {"live": 0, "stale": 1, "missing": 2}

HEAT_BASE = 100
HEAT_VALUES = ("energy_kwh", "volume_m3", "flow_m3h", "power_kw", "supply_c", "return_c",
               "cooling_c")  # fmt: skip
EXACT_BASE = 140  # energy u32 in 0.1 kWh, volume u32 in 0.001 m3
DP_BASE = 200
LIMITER_BASE = 300
RECORD_BASE = 400
RECORD_FLAGS = ("no_data", "partial", "interpolated", "counter_reset", "meter_error",
                "clock_unsynced", "limited", "meter_replaced")  # fmt: skip

# (start, length) of each defined area: reads must lie inside one
AREAS = ((0, 10), (HEAT_BASE, 4 * len(HEAT_VALUES)), (EXACT_BASE, 4), (DP_BASE, 4),
         (LIMITER_BASE, 18), (RECORD_BASE, 21))  # fmt: skip


@dataclass
class Memory:
    """Last known value per (device role, name): (value, reading time, quality word), so a
    device that fails keeps its last value with quality OFFLINE and a growing age."""

    last: dict[tuple[str, str], tuple[float, float, int]] = field(default_factory=dict)


def f32(v: float | None) -> list[int]:
    x = NAN if v is None or not isinstance(v, int | float) else float(v)
    try:
        b = struct.pack(">f", x)
    except OverflowError:
        b = struct.pack(">f", math.copysign(math.inf, x))
    return list(struct.unpack(">HH", b))


def u32(v: float | None) -> list[int]:
    if v is None or not math.isfinite(v) or v < 0:
        return [0xFFFF, 0xFFFF]
    n = min(int(v), 0xFFFFFFFE)
    return [n >> 16, n & 0xFFFF]


def _first(snap: Mapping[str, Any], role: str) -> tuple[str | None, Mapping[str, Any]]:
    for name, d in (snap.get("devices") or {}).items():
        if isinstance(d, dict) and d.get("role") == role:
            return str(name), d
    return None, {}


def _record(
    mem: Memory, role: str, name: str, dev: Mapping[str, Any], now: float, status: str
) -> list[int]:
    """The 4 registers of one live value."""
    vals = dev.get("values") or {}
    ts = number(dev.get("ts"))
    if name == "cooling_c":
        s, r = vals.get("supply_c") or {}, vals.get("return_c") or {}
        sv, rv = number(s.get("value")), number(r.get("value"))
        entry: dict[str, Any] = {}
        if sv is not None and rv is not None:
            qs = max(
                QUALITY.get(str(s.get("quality")), FAULT), QUALITY.get(str(r.get("quality")), FAULT)
            )
            entry = {"value": sv - rv, "q": qs}
    else:
        e = vals.get(name) or {}
        v = number(e.get("value"))
        entry = (
            {"value": v, "q": QUALITY.get(str(e.get("quality")), FAULT)} if v is not None else {}
        )
    key = (role, name)
    if entry and ts is not None and dev.get("ok") is not False:
        mem.last[key] = (float(entry["value"]), ts, int(entry["q"]))
        value, t, q = mem.last[key]
    elif key in mem.last:
        value, t, _ = mem.last[key]
        q = OFFLINE
    else:
        return [*f32(None), MISSING, AGE_UNKNOWN]
    if status != "live":
        q = STALE if status == "stale" else MISSING
    age = now - t
    age_w = AGE_UNKNOWN if not 0 <= age < AGE_UNKNOWN else round(age)
    return [*f32(value), q, age_w]


def build_image(
    snap: Mapping[str, Any] | None, now: float, status: str, mem: Memory
) -> dict[int, int]:
    """Address -> word for the whole map from a snapshot (``status``: live | stale |
    missing, from ``agent.snapshot.freshness``)."""
    snap = snap or {}
    img: dict[int, int] = {}

    def put(addr: int, words: list[int]) -> None:
        for i, w in enumerate(words):
            img[addr + i] = w & 0xFFFF

    written = number(snap.get("written"))
    age = now - written if written is not None else None
    hm_name, hm = _first(snap, HEAT_METER)
    dp_name, dp = _first(snap, DP_SENSOR)
    put(0, [MAP_VERSION, STATUS[status]])
    put(2, [AGE_UNKNOWN if age is None or not 0 <= age < AGE_UNKNOWN else round(age)])
    put(3, [1 if snap.get("clock_synced") else 0])
    put(4, u32(written))
    put(6, [HEALTH.get(str(hm.get("health")), 0xFFFF), HEALTH.get(str(dp.get("health")), 0xFFFF)])
    put(8, [1 if hm_name else 0, 1 if dp_name else 0])
    for i, name in enumerate(HEAT_VALUES):
        put(HEAT_BASE + 4 * i, _record(mem, HEAT_METER, name, hm, now, status))
    e = mem.last.get((HEAT_METER, "energy_kwh"))
    v = mem.last.get((HEAT_METER, "volume_m3"))
    put(EXACT_BASE, u32(round(e[0] * 10) if e else None))
    put(EXACT_BASE + 2, u32(round(v[0] * 1000) if v else None))
    put(DP_BASE, _record(mem, DP_SENSOR, "dp_kpa", dp, now, status))
    _limiter(snap, put)
    _last_record(snap, hm_name, put)
    return img


def _limiter(snap: Mapping[str, Any], put: Any) -> None:
    lim = snap.get("limiter") or {}
    con = snap.get("contract") or {}
    flags = [1 if lim.get(k) else 0 for k in ("active", "enforce", "limiting", "failsafe")]
    put(LIMITER_BASE, flags)
    put(LIMITER_BASE + 4, f32(number(con.get("flow_limit_m3h"))))
    put(LIMITER_BASE + 6, f32(number(con.get("power_limit_kw"))))
    put(LIMITER_BASE + 8, f32(number(lim.get("last_write_pct"))))
    put(LIMITER_BASE + 10, f32(number(lim.get("allowed_flow_m3h"))))
    put(LIMITER_BASE + 12, f32(number(lim.get("period_volume_m3"))))
    put(LIMITER_BASE + 14, f32(number(lim.get("budget_m3"))))
    put(LIMITER_BASE + 16, u32(number(lim.get("period_start"))))


def _last_record(snap: Mapping[str, Any], hm_name: str | None, put: Any) -> None:
    rec = (snap.get("last_records") or {}).get(hm_name or "") or {}
    put(RECORD_BASE, u32(parse_time(rec.get("start"))))
    put(RECORD_BASE + 2, u32(parse_time(rec.get("end"))))
    for i, k in enumerate(("energy_kwh", "volume_m3", "flow_avg_m3h", "power_avg_kw",
                           "supply_avg_c", "return_avg_c", "cooling_avg_c")):  # fmt: skip
        put(RECORD_BASE + 4 + 2 * i, f32(number(rec.get(k))))
    flags = rec.get("flags") or []
    put(RECORD_BASE + 18, [sum(1 << i for i, f in enumerate(RECORD_FLAGS) if f in flags)])
    put(RECORD_BASE + 19, [1 if rec.get("limit_exceeded") is True else 0])
    put(RECORD_BASE + 20, [GOOD if rec else MISSING])


def _exc(fc: int, code: int) -> bytes:
    return bytes([(fc | 0x80) & 0xFF, code])


def answer(image: Mapping[int, int], pdu: bytes) -> bytes:
    """The response PDU to one request PDU (read-only: FC 3/4; else exception 1)."""
    if not pdu:
        return _exc(0, 1)
    fc = pdu[0]
    if fc not in (3, 4):
        return _exc(fc, 1)
    if len(pdu) != 5:
        return _exc(fc, 3)
    addr, count = struct.unpack(">HH", pdu[1:5])
    if not 1 <= count <= 125:
        return _exc(fc, 3)
    if not any(a <= addr and addr + count <= a + n for a, n in AREAS):
        return _exc(fc, 2)
    words = [image.get(a, 0) for a in range(addr, addr + count)]
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words)
