"""Meter identity over time: replacement and stored-value events. Pure (no I/O).

``MeterWatch`` follows, per device, the identity the readings report (``Reading.meter_id``,
the M-Bus identification number) and the meter's stored values (storage 1 and up, e.g.
the billing-date energy and its date, from ``drivers.mbus_map.stored_values``):

* ``meter_replaced``: the id changed between two readings (a meter swap). One event with
  both ids and their register values: the old meter's last reading (``old_energy_kwh``,
  ``old_volume_m3``, ``old_time``) and the new meter's first (``new_energy_kwh``,
  ``new_volume_m3``, time of the event). The aggregator ends the old register series
  there and starts the new one (``agent.aggregator``), never a ``counter_reset``.
* ``meter_stored_values``: the stored values differ from the last ones seen (and once
  after a start), so a head-end can reconcile the summed interval records against the
  meter's own billing-date value.

Raw samples on disk keep the id as a flag ``meter_id=ID`` (``disk_flags``), turned back
into ``Sample.meter_id`` when they are reloaded after a restart (``restored_sample``), so
a swap is seen once across restarts too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.aggregator import AggState, Sample
from agent.timefmt import rfc3339
from drivers.types import Reading

FLAG_PREFIX = "meter_id="


def disk_flags(s: Sample) -> list[str]:
    """A sample's flags for the disk, with its meter id."""
    out = sorted(s.flags)
    if s.meter_id is not None:
        out.append(FLAG_PREFIX + s.meter_id)
    return out


def restored_sample(ts: float, values: Mapping[str, float], flags: Iterable[str]) -> Sample:
    """A sample reloaded from disk: the ``meter_id=`` flag back into ``meter_id``."""
    mid: str | None = None
    kept: set[str] = set()
    for f in flags:
        if f.startswith(FLAG_PREFIX):
            mid = f[len(FLAG_PREFIX) :]
        else:
            kept.add(f)
    return Sample(ts=ts, values=values, flags=frozenset(kept), meter_id=mid)


@dataclass(frozen=True, slots=True)
class MeterMark:
    """The last reading of a meter: its id and registers."""

    meter_id: str
    ts: float
    energy_kwh: float | None
    volume_m3: float | None


class MeterWatch:
    """See the module doc."""

    def __init__(self) -> None:
        self.marks: dict[str, MeterMark] = {}
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.sample_ids: dict[str, str] = {}

    def seed(self, device: str, state: AggState, pending: Sequence[Sample]) -> None:
        """After a restart: the identity last seen, from the reloaded samples or the
        aggregator's state."""
        for s in reversed(pending):
            if s.meter_id is not None:
                self.marks[device] = MeterMark(
                    s.meter_id, s.ts, s.values.get("energy_kwh"), s.values.get("volume_m3")
                )
                self.sample_ids[device] = s.meter_id
                return
        if state.meter_id is not None:
            e = state.anchor.get("energy_kwh")
            v = state.anchor.get("volume_m3")
            ts = e[0] if e else (state.boundary or 0.0)
            self.marks[device] = MeterMark(
                state.meter_id, ts, e[1] if e else None, v[1] if v else None
            )
            self.sample_ids[device] = state.meter_id

    def observe(
        self, device: str, r: Reading, stored: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Events for one live reading (in reading order)."""
        if not r.ok or r.meter_id is None:
            return []
        events: list[dict[str, Any]] = []
        mark = self.marks.get(device)
        energy, volume = r.good("energy_kwh"), r.good("volume_m3")
        if mark is not None and mark.meter_id != r.meter_id:
            events.append(
                {
                    "kind": "meter_replaced",
                    "device": device,
                    "old_meter_id": mark.meter_id,
                    "new_meter_id": r.meter_id,
                    "old_energy_kwh": mark.energy_kwh,
                    "old_volume_m3": mark.volume_m3,
                    "old_time": rfc3339(mark.ts),
                    "new_energy_kwh": energy,
                    "new_volume_m3": volume,
                    "t": r.ts,
                }
            )
            mark = None
        self.marks[device] = MeterMark(
            r.meter_id,
            r.ts,
            energy if energy is not None else (mark.energy_kwh if mark else None),
            volume if volume is not None else (mark.volume_m3 if mark else None),
        )
        if stored is not None and stored != self.stored.get(device):
            self.stored[device] = stored
            events.append(
                {
                    "kind": "meter_stored_values",
                    "device": device,
                    "meter_id": r.meter_id,
                    "stored": stored,
                    "t": r.ts,
                }
            )
        return events

    def sample_flags(self, device: str, meter_id: str | None) -> frozenset[str]:
        """``meter_replaced`` on the first sample of a new meter (so it is kept on disk)."""
        if meter_id is None:
            return frozenset()
        last = self.sample_ids.get(device)
        self.sample_ids[device] = meter_id
        return (
            frozenset({"meter_replaced"}) if last is not None and last != meter_id else frozenset()
        )
