"""`dh-agent poll --once`: read every device once and print one JSON object per device."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, TextIO

from agent.config import Config
from agent.devices import driver_spec
from drivers.clock_sys import SystemClock
from drivers.device import AnyDevice, DevicePool
from drivers.mbus_device import MbusDevice
from drivers.profile import Profile, Register
from drivers.types import Clock, Reading

F32_DIGITS = 7  # significant decimal digits a 32-bit float carries


def _decimals(x: float) -> int:
    """Decimal places needed to write ``x`` exactly (up to 9), e.g. 0.001 -> 3, 1 -> 0."""
    for d in range(10):
        if math.isclose(x, round(x, d), rel_tol=0.0, abs_tol=1e-12):
            return d
    return 9


def precise(v: float, reg: Register | None) -> float:
    """A register value with the precision the register has, without float noise:
    integer registers to the decimals of their scale and offset (0.1 kWh steps: one
    decimal), 32-bit floats to 7 significant digits. Values of no register as they are."""
    if reg is None or not math.isfinite(v):
        return v
    if reg.type == "f32":
        return v if v == 0 else float(f"{v:.{F32_DIGITS}g}")
    return round(v, max(_decimals(reg.scale), _decimals(reg.offset)))


def values_json(values: dict[str, Any], profile: Profile | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        obj = v.to_json()
        if isinstance(obj.get("value"), float):
            obj["value"] = precise(
                obj["value"],
                profile.register(k) if profile is not None and profile.has(k) else None,
            )
        out[k] = obj
    return out


def reading_json(r: Reading, dev: AnyDevice) -> dict[str, Any]:
    prof = dev.spec.profile
    out = {
        "name": r.device,
        "role": r.role,
        "health": str(dev.health),
        "ok": r.ok,
        "ts": r.ts,
        "clock_synced": r.synced,
        "error": r.error,
        "values": values_json(dict(r.values), prof if isinstance(prof, Profile) else None),
        "counters": dict(dev.counters),
    }
    if isinstance(dev, MbusDevice):  # the meter's identity and stored (billing-date) values
        out["identity"] = dev.identity
        out["stored"] = dev.stored
        out["line"] = {"garbage_bytes": dev.line.garbage_bytes, "stale_bytes": dev.line.stale_bytes}
    return out


async def _poll(cfg: Config, clock: Clock) -> list[dict[str, Any]]:
    pool = DevicePool(clock)
    try:
        devices = [pool.add(driver_spec(d)) for d in cfg.devices]
        out = []
        for dev in devices:  # one after another: devices may share a serial line
            r = await dev.read()
            out.append(reading_json(r, dev))
        return out
    finally:
        await pool.close()


def poll_once(cfg: Config, out: TextIO) -> int:
    """Exit 0 when every device answered, 1 otherwise (all are printed either way)."""
    results = asyncio.run(_poll(cfg, SystemClock()))
    for obj in results:
        out.write(json.dumps(obj, sort_keys=True) + "\n")
    out.flush()
    return 0 if all(o["ok"] for o in results) else 1
