"""What the heat meter shows, as opposed to what flows. Pure.

A real heat meter measures with a lag (the flow sensor's and the temperature sensors'
time constants, ``lag_s``) and refreshes its registers only at its measuring cycle
(``update_s``, 10-60 s on a battery or M-Bus meter): between two refreshes every
register (flow, power, temperatures and the energy and volume counters) keeps its
value. The counters are shown at their resolution by the register encoding (the
simulator floors them, as a meter's display does). ``update_s = 0`` and ``lag_s = 0``
show the live values (the old behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

LAGGED = ("flow_m3h", "power_kw", "supply_c", "return_c", "delta_t_c")
HELD = (*LAGGED, "volume_m3", "energy_kwh")


class MeterDisplay:
    def __init__(self, update_s: float = 0.0, lag_s: float = 0.0) -> None:
        if update_s < 0 or lag_s < 0:
            raise ValueError("update_s and lag_s must be >= 0")
        self.update_s = float(update_s)
        self.lag_s = float(lag_s)
        self._lagged: dict[str, float] = {}
        self.shown: dict[str, float] = {}
        self.updated_at: float | None = None

    def observe(self, t: float, h: float, live: Mapping[str, float]) -> None:
        """The plant's state at ``t``, ``h`` seconds after the previous observation."""
        for k in LAGGED:
            x = live[k]
            y = self._lagged.get(k)
            if y is None or self.lag_s <= 0.0:
                self._lagged[k] = x
            else:
                self._lagged[k] = y + (x - y) * (1.0 - math.exp(-h / self.lag_s))
        due = (
            self.update_s <= 0.0
            or self.updated_at is None
            or math.floor(t / self.update_s + 1e-9)
            > math.floor(self.updated_at / self.update_s + 1e-9)
        )
        if due:
            self.shown = {
                **self._lagged,
                "volume_m3": live["volume_m3"],
                "energy_kwh": live["energy_kwh"],
            }
            self.updated_at = t
