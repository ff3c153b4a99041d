"""The simulated M-Bus heat meter's content: plant state -> EN 13757-3 user data.

Pure (no I/O): ``MeterImage`` holds a meter's identity and builds the records of a typical
heat meter from the plant, encoded with ``drivers.mbus_app.encode_user_data``:

storage 0 (instantaneous): energy (kWh, int32), volume (0.01 m3, int32), power (0.1 kW),
volume flow (l/h), flow and return temperature (0.01 C, int16), temperature difference
(0.01 K), on time (h), date and time (type F), fabrication number (BCD 8);
storage 1: the energy and volume at the last billing date and that date (type G).

Counters show the floor of the plant's exact register at the record's resolution, like
the Modbus heat meter. The billing date is the last midnight (UTC) the simulator ran
through; before the first one, the start register on the day before the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drivers.mbus_app import Header, Record, encode_user_data, make_record
from simulator.plant import Plant

MEDIUM_HEAT_OUTLET = 0x04  # heat, measured at the return (outlet) pipe
STATUS_TEMPORARY_ERROR = 0x10
DAY_S = 86400.0


def _date(ts: float, with_time: bool) -> str:
    d = datetime.fromtimestamp(ts, tz=UTC)
    return d.strftime("%Y-%m-%dT%H:%M") if with_time else d.strftime("%Y-%m-%d")


@dataclass
class MeterImage:
    """One simulated meter: identity + the billing-date memory."""

    ident: str  # 8 digits
    manufacturer: str = "DHS"
    version: int = 0x01
    medium: int = MEDIUM_HEAT_OUTLET
    fabrication: int = 0
    access: int = 0
    billing_ts: float | None = None
    billing: tuple[float, float] = (0.0, 0.0)  # energy kWh, volume m3 at billing_ts
    _on_h0: int = field(default=12_000)

    def header(self, status: int) -> Header:
        self.access = (self.access + 1) & 0xFF
        return Header(
            self.ident, self.manufacturer, self.version, self.medium, self.access, status, 0
        )

    def update_billing(self, plant: Plant) -> None:
        """Keep the register at the last midnight crossed (called on every request)."""
        day = math.floor(plant.t / DAY_S) * DAY_S
        if self.billing_ts is None:
            self.billing_ts = day - DAY_S
            self.billing = (math.floor(plant.energy_kwh), math.floor(plant.volume_m3 * 100) / 100)
        elif day > self.billing_ts and plant.t - day < 3600:
            self.billing_ts = day
            self.billing = (math.floor(plant.energy_kwh), math.floor(plant.volume_m3 * 100) / 100)

    def records(self, plant: Plant) -> list[Record]:
        self.update_billing(plant)
        e_kwh = math.floor(plant.energy_kwh + 1e-9)
        v_cl = math.floor(plant.volume_m3 * 100 + 1e-9)
        on_h = self._on_h0 + int((plant.t - plant.t0) // 3600)
        be, bv = self.billing
        return [
            make_record(0x4, 0x06, e_kwh * 1000),  # energy, kWh
            make_record(0x4, 0x14, v_cl / 100),  # volume, 0.01 m3
            make_record(0x4, 0x2D, round(plant.power_kw * 10) * 100),  # power, 0.1 kW (W)
            make_record(0x4, 0x3B, round(plant.flow_m3h * 1000) / 1000),  # flow, l/h
            make_record(0x2, 0x59, round(plant.supply_c * 100) / 100),  # flow temp, 0.01 C
            make_record(0x2, 0x5D, round(plant.return_c * 100) / 100),  # return temp
            make_record(0x2, 0x61, round((plant.supply_c - plant.return_c) * 100) / 100),
            make_record(0x4, 0x22, on_h * 3600),  # on time, h (s)
            make_record(0x4, 0x6D, _date(plant.t, True)),  # date and time, type F
            make_record(0xC, 0x78, self.fabrication),  # fabrication number
            make_record(0x4, 0x06, int(be) * 1000, storage=1),  # billing-date energy
            make_record(0x4, 0x14, bv, storage=1),  # billing-date volume
            make_record(0x2, 0x6C, _date(self.billing_ts or plant.t, False), storage=1),
        ]

    def telegrams(self, plant: Plant, status: int = 0, parts: int = 1) -> list[bytes]:
        """The user data (after CI 0x72) of one reading, split into ``parts`` telegrams
        (all but the last end with DIF 0x1F, more records follow)."""
        recs = self.records(plant)
        parts = max(1, min(parts, len(recs)))
        size = math.ceil(len(recs) / parts)
        chunks = [recs[i : i + size] for i in range(0, len(recs), size)]
        return [
            encode_user_data(self.header(status), chunk, more_follows=k < len(chunks) - 1)
            for k, chunk in enumerate(chunks)
        ]
