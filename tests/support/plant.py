"""The limiter's pure law closed over the simulator's pure plant, shared by
tests/test_limiter_plant.py and bench/limiter.py: the meter as the agent reads it, and the
limiter configured for the plant."""

from __future__ import annotations

import math
import struct

from agent.limiter import LimiterParams, MeterInput
from simulator.plant import Plant
from simulator.scenarios import ScenarioParams

LIMIT = 2.5  # m3/h, the contract in every case
T0 = 1_705_276_800.0  # 2024-01-15T00:00:00Z, aligned to every period


def f32(x: float) -> float:
    """``x`` through a float32 register."""
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def reading(pl: Plant) -> MeterInput:
    """The meter as the sim-heat-meter profile shows it (volume floored to 0.001 m3,
    energy to 0.1 kWh, flow and power as float32), with the actuator's reported position
    (0.1 % steps)."""
    m = pl.meter.shown
    return MeterInput(
        t=pl.t,
        volume_m3=math.floor(m["volume_m3"] / 0.001 + 1e-9) * 0.001,
        energy_kwh=math.floor(m["energy_kwh"] / 0.1 + 1e-9) * 0.1,
        flow_m3h=f32(m["flow_m3h"]),
        power_kw=f32(m["power_kw"]),
        valid=True,
        position_pct=round(pl.position_pct, 1),
        return_c=round(m["return_c"], 2),
    )


def limiter_params(sc: ScenarioParams, period_s: int) -> LimiterParams:
    """The limiter configured for the plant, as an installer would (stroke time and the
    valve's characteristic from the data sheet)."""
    return LimiterParams(
        flow_limit_m3h=LIMIT,
        power_limit_kw=None,
        period_s=period_s,
        enforce=True,
        refresh_s=20.0,
        stroke_s=sc.stroke_s,
        characteristic=sc.valve_characteristic,
        meter_lag_s=sc.meter_lag_s,
    )
