"""The heat meter as it measures the plant, with injectable meter faults. Pure.

``MeterModel`` sits between the plant's physics (the true flow, temperatures and heat)
and the meter's registers: it gives what the meter *shows* (``flow_m3h``, ``power_kw``,
``supply_c``, ``return_c``, ``delta_t_c``, ``status``) and what its counters add per
step (``increments``). Without a fault it is transparent. The fault (scenario fields
``meter_fault``, ``meter_fault_after_s`` s after the plant's t0, ``meter_drift``):

``drift``        the calculator counts ``1 + meter_drift`` times the heat its own volume
                 and temperatures carry (energy register and power); volume, flow and
                 temperatures stay true: what the agent's energy comparison must find.
``swapped``      the supply and return sensors are swapped: the meter shows the return
                 temperature as supply and vice versa; with a negative difference it
                 counts no heat (power 0, energy register stops); volume counts on.
``stuck-flow``   the flow sensor freezes at the flow of the onset: the meter shows that
                 flow to the last digit, its volume counts it, and power / energy follow
                 the stuck flow with the true temperatures (self-consistent, but wrong).
``open-sensor``  the supply sensor is open: the meter shows 185.00 C, delta T 0, power 0,
                 status 1 (error); the energy register stops, volume counts on.

The truth log shows the fault (``meter_fault``: its name from the onset, ``"none"``
before) and the meter's view (``meter_*`` fields) beside the true values.
"""

from __future__ import annotations

from typing import Any

from agent.plausibility_water import heat_coefficient

FAULTS = ("drift", "swapped", "stuck-flow", "open-sensor")
OPEN_SENSOR_C = 185.0


class MeterModel:
    def __init__(self, fault: str | None, after_s: float, drift: float, t0: float) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown meter fault {fault!r}; one of: {', '.join(FAULTS)}")
        self.fault = fault
        self.onset = t0 + after_s
        self.drift = drift
        self.active = False
        self.stuck_flow: float | None = None
        self.flow_m3h = 0.0
        self.power_kw = 0.0
        self.supply_c = 0.0
        self.return_c = 0.0
        self.delta_t_c = 0.0
        self.status = 0.0

    def update(self, t: float, flow: float, power: float, supply: float, ret: float) -> None:
        """The meter's view of the plant's true state at ``t``."""
        self.active = self.fault is not None and t >= self.onset
        f = self.fault if self.active else None
        self.flow_m3h, self.power_kw, self.supply_c, self.return_c = flow, power, supply, ret
        self.delta_t_c, self.status = supply - ret, 0.0
        if f == "drift":
            self.power_kw = power * (1.0 + self.drift)
        elif f == "swapped":
            self.supply_c, self.return_c = ret, supply
            self.delta_t_c = ret - supply
            self.power_kw = 0.0
        elif f == "stuck-flow":
            if self.stuck_flow is None:
                self.stuck_flow = flow
            self.flow_m3h = self.stuck_flow
            self.power_kw = self.stuck_flow * heat_coefficient(supply, ret) * (supply - ret) / 3600
        elif f == "open-sensor":
            self.supply_c, self.delta_t_c, self.power_kw, self.status = OPEN_SENSOR_C, 0.0, 0.0, 1.0

    def increments(self, dv: float, de: float, h: float) -> tuple[float, float]:
        """What the meter's volume and energy registers add over ``h`` s in which the
        plant truly passed ``dv`` m3 carrying ``de`` kWh."""
        if not self.active:
            return dv, de
        if self.fault == "drift":
            return dv, de * (1.0 + self.drift)
        if self.fault == "stuck-flow":
            return self.flow_m3h * h / 3600.0, self.power_kw * h / 3600.0
        return dv, 0.0  # swapped, open-sensor: no heat counted

    def truth(self) -> dict[str, Any]:
        if self.fault is None:
            return {}
        return {
            "meter_fault": self.fault if self.active else "none",
            "meter_flow_m3h": self.flow_m3h,
            "meter_power_kw": self.power_kw,
            "meter_supply_c": self.supply_c,
            "meter_return_c": self.return_c,
            "meter_status": self.status,
        }
