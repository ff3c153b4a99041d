"""A wired M-Bus meter as a device: one poll -> one typed ``Reading``, like the Modbus
``drivers.device.Device``.

``MbusDevice.read`` asks the meter for its data (``drivers.mbus_master.MbusSlave``: one
REQ_UD2 per telegram, SND_NKE only at the start and after a failure), decodes every
telegram (``drivers.mbus_app``), merges the records of a multi-telegram reply, and maps
them to the canonical values with the device's M-Bus profile (``drivers.mbus_map``:
units converted; the status byte's error bits and error-state records make values
``meter_error``). It never raises for bus errors: a poll that still fails after the
retries, or a telegram that is malformed, cut short or an application error (CI 0x70),
is ``Reading(ok=False, values={}, error=...)`` and counted.

The reading carries ``meter_id`` (the identification number of the fixed header); the
device keeps the last ``identity`` (id, manufacturer, version, medium, status) and the
meter's ``stored`` values (storage 1 and up, e.g. the billing-date energy and its date).

Health: the same rule as Modbus devices (``drivers.health.next_health``). Counters: those
of ``drivers.mbus_master.COUNTER_NAMES`` (requests, ok, timeouts, checksum_errors,
bad_frames, retries, ...) plus ``decode_errors`` and ``app_errors``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError, TransportError
from drivers.health import OFFLINE_AFTER, OFFLINE_AFTER_S, HealthState, next_health
from drivers.mbus_app import MbusApplicationError, MbusDecodeError, Telegram, decode_user_data
from drivers.mbus_frame import Frame
from drivers.mbus_map import MbusProfile, identity, load_mbus_profile, map_values, stored_values
from drivers.mbus_master import COUNTER_NAMES, MbusLine, MbusSlave
from drivers.types import Clock, Health, Quality, Reading, Value

log = logging.getLogger(__name__)

MBUS_COUNTERS = (*COUNTER_NAMES, "decode_errors", "app_errors")


@dataclass(frozen=True)
class MbusSpec:
    name: str
    role: str
    port: str
    baudrate: int = 2400
    address: int | None = None
    secondary: str | None = None
    profile: str = "mbus"
    timeout_s: float | None = None  # None: the standard 330 bit times + 50 ms
    retries: int = 2

    @property
    def transport(self) -> str:
        return "mbus"


def merge(telegrams: list[Telegram]) -> Telegram:
    """One telegram holding the records of a multi-telegram reply (the first header, the
    status bits of all)."""
    if len(telegrams) == 1:
        return telegrams[0]
    status = 0
    for t in telegrams:
        status |= t.status
    return dataclasses.replace(
        telegrams[0],
        status=status,
        records=tuple(r for t in telegrams for r in t.records),
        manufacturer_data=b"".join(t.manufacturer_data for t in telegrams),
        more_follows=False,
    )


def _more(f: Frame) -> bool:
    """Another telegram follows (DIF 0x1F): decoded just for that flag."""
    try:
        return decode_user_data(f.ci or 0, f.data).more_follows
    except MbusDecodeError:
        return False  # judged (and counted) when the reading is decoded


class MbusDevice:
    """One M-Bus meter on a (possibly shared) line; see the module doc."""

    def __init__(
        self,
        spec: MbusSpec,
        clock: Clock,
        line: MbusLine | None = None,
        *,
        profile: MbusProfile | None = None,
        offline_after: int = OFFLINE_AFTER,
        offline_after_s: float = OFFLINE_AFTER_S,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self._own_line = line is None
        self.line = line if line is not None else MbusLine(spec.port, spec.baudrate)
        self.profile = profile if profile is not None else load_mbus_profile(spec.profile)
        self.counters: dict[str, int] = dict.fromkeys(MBUS_COUNTERS, 0)
        self.slave = MbusSlave(
            self.line,
            spec.address,
            spec.secondary,
            timeout_s=spec.timeout_s,
            retries=spec.retries,
            counters=self.counters,
        )
        self.offline_after = offline_after
        self.offline_after_s = offline_after_s
        self._health = HealthState(Health.OFFLINE, 0, clock.mono())
        self.last_error: str | None = None
        self.identity: dict[str, Any] | None = None
        self.stored: list[dict[str, Any]] | None = None

    @property
    def health(self) -> Health:
        return self._health.health

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rollover(self) -> dict[str, float]:
        return {s.name: s.rollover for s in self.profile.selects if s.rollover}

    async def _telegram(self) -> Telegram:
        frames = await self.slave.read_frames(_more)
        try:
            return merge([decode_user_data(f.ci or 0, f.data) for f in frames])
        except MbusApplicationError:
            self.counters["app_errors"] += 1
            raise
        except MbusDecodeError:
            self.counters["decode_errors"] += 1
            self.counters["bad_frames"] += 1
            raise

    async def read(self) -> Reading:
        """Read the meter once; never raises for bus or decoding errors."""
        c = self.counters
        c["polls"] += 1
        values: dict[str, Value] = {}
        error: str | None = None
        meter_id: str | None = None
        try:
            t = await self._telegram()
            values = map_values(t, self.profile)
            self.identity = identity(t)
            self.stored = stored_values(t)
            meter_id = self.identity.get("id")
        except TransportError as e:
            error = f"{type(e).__name__}: {e}"
        except MbusDecodeError as e:
            error = f"{type(e).__name__}: {e}"
            log.warning("%s: telegram not decoded: %s", self.spec.name, e)
        mono = self.clock.mono()
        ok = error is None
        self._health = next_health(self._health, ok, mono, self.offline_after, self.offline_after_s)
        if not ok:
            c["polls_failed"] += 1
            self.last_error = error
        bad = sum(1 for v in values.values() if v.quality is not Quality.GOOD)
        c["implausible"] += bad
        return Reading(
            device=self.spec.name,
            role=self.spec.role,
            ts=self.clock.wall(),
            mono=mono,
            synced=self.clock.synced(),
            ok=ok,
            values=values,
            error=error,
            meter_id=meter_id,
        )

    async def write(self, name: str, value: float) -> None:
        raise DriverError(f"{self.spec.name}: an M-Bus meter has no writable value {name!r}")

    async def close(self) -> None:
        if self._own_line:
            await self.line.close()
