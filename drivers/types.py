"""Typed readings: what a driver hands to the rest of the agent.

Plain, immutable data; no I/O. Every layer above the drivers (poller, aggregator,
limiter, monitors, uplink) speaks in these types.
"""

from __future__ import annotations

from dataclasses import field
from enum import StrEnum
from typing import Any, Protocol

from drivers.dataclass_lite import frozen


class Quality(StrEnum):
    """Quality of one value in one reading."""

    GOOD = "good"
    IMPLAUSIBLE = "implausible"  # decoded, but outside the profile's physical range
    FAULT = "fault"  # the device says the sensor is faulty (e.g. 4-20 mA loop out of range)
    METER_ERROR = "meter_error"  # the meter flags the value (M-Bus status byte, error state)


class Health(StrEnum):
    """Per-device health, from the driver's recent success/failure history."""

    OK = "ok"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@frozen
class Value:
    """One decoded register value with its unit and quality."""

    value: float
    unit: str
    quality: Quality = Quality.GOOD

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "quality": str(self.quality)}


@frozen
class Reading:
    """The result of one poll of one device.

    ``ts`` is the wall clock (Unix seconds) when the read completed, ``mono`` the
    monotonic clock at the same instant, ``synced`` whether the wall clock was
    known to be synchronised then. ``ok`` is False when the read failed as a whole
    (timeout, exception response, CRC error after retries); ``values`` is then empty
    and ``error`` says why.
    """

    device: str
    role: str
    ts: float
    mono: float
    synced: bool
    ok: bool
    values: dict[str, Value] = field(default_factory=dict)
    error: str | None = None
    meter_id: str | None = None  # the meter's identity where the device reports one (M-Bus)

    def good(self, name: str) -> float | None:
        """The value of ``name`` if present and of good quality, else None."""
        v = self.values.get(name)
        return v.value if v is not None and v.good else None


# Canonical value names. Profiles map registers to these names; the agent uses only these.
HEAT_METER_VALUES = (
    "energy_kwh",  # cumulative energy register
    "volume_m3",  # cumulative volume register
    "power_kw",
    "flow_m3h",
    "supply_c",
    "return_c",
    "status",  # meter error/status code, 0 = OK
)
DP_SENSOR_VALUES = ("dp_kpa",)
ACTUATOR_VALUES = ("limit_pct", "position_pct", "watchdog_s")


class Clock(Protocol):
    """Where time comes from. Production: the system clocks; tests: a simulated clock."""

    def wall(self) -> float:
        """Wall-clock time, Unix seconds."""
        ...

    def mono(self) -> float:
        """Monotonic seconds (never steps)."""
        ...

    def synced(self) -> bool:
        """True when the wall clock is known to be synchronised (NTP)."""
        ...
