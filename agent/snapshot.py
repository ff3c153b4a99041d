"""The live snapshot: the running agent's state as one JSON file (docs/live-snapshot.md).

``build_snapshot(...)`` is pure: plain data in (the devices' last readings, counters and
health, the limiter's params and state, the open alarms, the uplink's state), one JSON
object out. ``telemetry_body(snapshot)`` derives the MQTT telemetry body from it, so the
page, the customer's server and the head-end see the same numbers. ``write_atomic``
writes it (temp file in the same folder, then rename; no fsync: it lives in RAM under
/run); ``read_snapshot`` is the readers' side: never raises on a missing, half-written,
malformed or stale file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import atomicfile
from agent.finite import finite
from agent.limiter import LimiterParams, LimiterState
from agent.limiter_law import allowed_rate
from drivers.types import Reading

SCHEMA_VERSION = 1
STALE_FACTOR = 3.0  # a snapshot older than this x every_s is stale
MAX_BYTES = 4 * 1024 * 1024  # readers refuse anything larger (a snapshot is a few kB)


@dataclass(frozen=True)
class DeviceView:
    """What the snapshot needs of one configured device (plain data, no I/O)."""

    name: str
    role: str
    transport: str
    profile: str
    health: str
    last: Reading | None = None
    counters: Mapping[str, int] = field(default_factory=dict)
    identity: Mapping[str, Any] | None = None


def device_entry(d: DeviceView) -> dict[str, Any]:
    r = d.last
    return {
        "role": d.role,
        "transport": d.transport,
        "profile": d.profile,
        "health": d.health,
        "ts": r.ts if r is not None else None,
        "clock_synced": r.synced if r is not None else None,
        "ok": r.ok if r is not None else None,
        "error": r.error if r is not None else None,
        "values": {
            k: {"value": finite(v.value), "unit": v.unit, "quality": str(v.quality)}
            for k, v in (r.values.items() if r is not None else ())
        },
        "counters": dict(d.counters),
        "identity": dict(d.identity) if d.identity is not None else None,
    }


def identity_of(device: object) -> dict[str, Any] | None:
    """A device's identity (M-Bus id, manufacturer ...; a Modbus serial) when its driver
    offers one as ``identity`` (a mapping or an object with ``to_json``), else None."""
    ident = getattr(device, "identity", None)
    to_json = getattr(ident, "to_json", None)
    if callable(to_json):
        ident = to_json()
    return dict(ident) if isinstance(ident, Mapping) else None


def limiter_view(
    params: LimiterParams, state: LimiterState, active: bool, limiting: bool
) -> dict[str, Any]:
    """The limiter's state and the running period's budget. ``allowed_flow_m3h`` is the
    law's allowed flow at the time of the last good reading (null when unknown)."""
    lim, ps = params.flow_limit_m3h, float(params.period_s)
    period = state.vol.period if state.vol.period is not None else state.energy.period
    allowed: float | None = None
    if lim is not None and state.vol.period is not None and state.last_t is not None:
        q = allowed_rate(lim, state.vol.used, state.vol.period, params, state, state.last_t)
        allowed = round(q, 4)
    plim = params.power_limit_kw
    return {
        "active": active,
        "enforce": params.enforce,
        "limiting": limiting,
        "last_write_pct": state.applied_pct,
        "last_write_t": state.last_write_t,
        "limiting_since": state.since if limiting else None,
        "failsafe": state.failsafe_since is not None,
        "period_start": period,
        "period_end": period + ps if period is not None else None,
        "period_volume_m3": round(state.vol.used, 6) if state.vol.period is not None else None,
        "period_energy_kwh": round(state.energy.used, 3)
        if state.energy.period is not None
        else None,
        "budget_m3": round(lim * ps / 3600.0, 6) if lim is not None else None,
        "budget_kwh": round(plim * ps / 3600.0, 3) if plim is not None else None,
        "allowed_flow_m3h": allowed,
        "last_t": state.last_t,
    }


def build_snapshot(
    *,
    site: str,
    wall: float,
    mono: float,
    clock_synced: bool,
    boot: int,
    pid: int,
    config_version: int,
    period_s: int,
    contract: Mapping[str, Any],
    delivery: Mapping[str, Any],
    devices: Sequence[DeviceView],
    limiter: Mapping[str, Any] | None,
    alarms: Sequence[tuple[str, str, float | None]],
    uplink: Mapping[str, Any] | None,
    last_records: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The snapshot, schema version 1 (docs/live-snapshot.md). Pure."""
    return {
        "v": SCHEMA_VERSION,
        "site": site,
        "written": wall,
        "mono": mono,
        "clock_synced": clock_synced,
        "boot": boot,
        "pid": pid,
        "config_version": config_version,
        "period_s": period_s,
        "contract": dict(contract),
        "delivery": dict(delivery),
        "devices": {d.name: device_entry(d) for d in devices},
        "limiter": dict(limiter) if limiter is not None else None,
        "alarms": [{"kind": k, "device": dev, "since": since} for dev, k, since in alarms],
        "uplink": dict(uplink) if uplink is not None else None,
        "last_records": {k: dict(v) for k, v in last_records.items()},
    }


def telemetry_body(snap: Mapping[str, Any]) -> dict[str, Any]:
    """The MQTT telemetry body from a snapshot: the devices that have read at least once
    (ok, health, ts, clock_synced, values) and whether the limiter is limiting."""
    lim = snap.get("limiter") or {}
    return {
        "devices": {
            name: {
                "ok": d["ok"],
                "health": d["health"],
                "ts": d["ts"],
                "clock_synced": d["clock_synced"],
                "values": d["values"],
            }
            for name, d in snap.get("devices", {}).items()
            if d.get("ts") is not None
        },
        "limiting": bool(lim.get("limiting", False)),
    }


def dumps(snap: Mapping[str, Any]) -> bytes:
    """JSON without NaN/Infinity (not JSON; readers in other languages refuse them)."""
    return json.dumps(snap, separators=(",", ":"), allow_nan=False, default=str).encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename, so
    a reader sees the old file or the new one, never half of one. No fsync (RAM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomicfile.write_atomic(path, data, fsync=False, mode=0o644)


def parse_snapshot(data: bytes) -> dict[str, Any] | None:
    """A snapshot from bytes, or None when it is not one (malformed, cut, wrong version)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != SCHEMA_VERSION:
        return None
    if not isinstance(doc.get("devices"), dict) or not isinstance(doc.get("written"), int | float):
        return None
    return doc


def freshness(snap: Mapping[str, Any] | None, now: float, every_s: float) -> str:
    """``missing`` (no usable file), ``stale`` (older than 3 x every_s) or ``live``. Pure."""
    if snap is None:
        return "missing"
    written = snap.get("written")
    if not isinstance(written, int | float) or now - written > STALE_FACTOR * every_s:
        return "stale"
    return "live"


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """The snapshot at ``path``, or None (missing, unreadable, too large, malformed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_BYTES:
        return None
    return parse_snapshot(data)
