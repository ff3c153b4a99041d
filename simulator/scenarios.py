"""Scenario parameters for the plant model and the fault injector.

Pure data: every knob of a scenario is a field of ``ScenarioParams`` so tests and the
demo can derive variants with ``dataclasses.replace`` (e.g. shorter outage timings,
counters just below rollover). Times marked ``*_after_s`` are seconds after the
plant's ``t0``.

Scenarios:

``steady``       mild weather (about 0 C), demand around 1.2 m3/h, small hot-water draws.
``winter-peak``  about -24 C; demand 1.5-2.5 x a 2.5 m3/h contract (3.75-6.25 m3/h).
``faults``       ``steady`` physics plus request faults (timeouts, bad RTU CRCs, Modbus
                 exception responses, absurd values) at a few percent each and one
                 energy-counter reset.
``outage``       ``steady`` physics; the supply temperature collapses after
                 ``outage_after_s`` for ``outage_duration_s``, then recovers.
``low-dp``       ``steady`` physics with the network pressure difference well below the
                 60 kPa of the general terms (about 35-50 kPa).
``meter-swap``   ``steady`` physics; the heat meter is replaced after ``meter_swap_after_s``:
                 a new identification number (M-Bus) and serial (Modbus), registers
                 restarting near zero.

``meter-drift``, ``swapped-sensors``, ``stuck-flow``, ``open-sensor``
                 ``steady`` physics with one heat-meter fault (``simulator.meter_faults``):
                 the calculator counting 6 % too much heat from the start, or, one hour
                 in, swapped temperature sensors, a frozen flow sensor, an open supply
                 sensor.
``winter-peak-slow``    ``winter-peak`` on real hardware: a 90 s full-stroke actuator with a
                 0.5 % deadband on an equal-percentage valve, a meter refreshed every 10 s
                 with a 5 s lag.
``winter-peak-slower``  the same with a 180 s actuator and a meter refreshed every 60 s.
``steady-slow``  ``steady`` physics on the slow hardware of ``winter-peak-slow``.
``return-high``  ``steady`` physics; from ``return_high_after_s`` for
                 ``return_high_duration_s`` the building returns at ``return_high_c``
                 (55 C) at full flow instead of 40 C (a bad secondary), then recovers.

Every scenario other than the ``*-slow*`` ones keeps the instant actuator, the linear
valve and the live meter; ``dh-sim --stroke-s/--deadband-pct/--valve/--meter-update-s/
--meter-lag-s`` select them for any scenario.

On the M-Bus slave (``--mbus-pty``) the request faults are: ``p_timeout`` no answer,
``p_bad_crc`` a bad checksum, ``p_mbus_cut`` a reply cut short, ``p_exception`` a status
byte with an error bit, ``p_mbus_multi`` a reading split into two telegrams,
``p_mbus_noise`` three bytes of line noise before the reply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ScenarioParams:
    name: str
    # --- weather: outdoor temperature = mean + amp * cos(2 pi (hour - peak_hour) / 24)
    #     + smooth seeded noise (value noise, knots every noise_knot_s)
    outdoor_mean_c: float = 0.0
    outdoor_amp_c: float = 2.0
    outdoor_peak_hour: float = 15.0
    outdoor_noise_c: float = 0.5
    noise_knot_s: float = 600.0
    # --- building: space heat = ua_kw_k * max(0, indoor_c - outdoor); plus hot-water draws
    indoor_c: float = 20.0
    ua_kw_k: float = 2.75
    return_nominal_c: float = 40.0  # return temperature when the flow meets demand
    secondary_min_c: float = 25.0  # the building's own return floor at 20 K heating load ...
    secondary_slope: float = 0.2  # ... rising this much per K of (indoor - outdoor)
    throttle_exponent: float = 0.4  # delivered/demand power = (flow/demand flow) ** this
    demand_flow_max_m3h: float = 8.0  # the building's own valves fully open
    # --- domestic hot water: per 300 s slot, 0..dhw_max_per_slot draws
    dhw_prob: float = 0.35  # probability that a slot has a draw
    dhw_power_kw: tuple[float, float] = (4.0, 12.0)
    dhw_duration_s: tuple[float, float] = (20.0, 240.0)
    # --- network: supply curve 115 C at -32 C outdoor .. 70 C at +10 C, clamped
    supply_cold_c: float = 115.0
    supply_warm_c: float = 70.0
    supply_noise_c: float = 0.4
    # network load L = clamp((18 - outdoor) / 50, 0, 1); dp = dp_nominal - dp_load_drop * L
    dp_nominal_kpa: float = 110.0
    dp_load_drop_kpa: float = 40.0
    dp_noise_kpa: float = 2.0
    dp_site_loss_kpa_per_m3h2: float = 0.3  # the service pipe's own loss, ~ Q^2
    # --- valve: capacity = kvs * sqrt(dp / 100 kPa) at 100 % open (simulator.actuator)
    kvs_m3h: float = 10.0
    watchdog_s: float = 60.0
    valve_characteristic: str = "linear"  # or "equal-percentage"
    rangeability: float = 50.0  # equal-percentage: capacity at 0 % stroke is 1/this
    stroke_s: float = 0.0  # actuator full-stroke time; 0 = the limit moves at once
    deadband_pct: float = 0.0  # the actuator ignores a command change smaller than this
    # --- what the meter shows (simulator.meter): 0 = live
    meter_update_s: float = 0.0  # registers refreshed every this many seconds
    meter_lag_s: float = 0.0  # first-order lag of flow, power and temperatures
    # --- outage (supply temperature collapse)
    outage_after_s: float | None = None
    outage_duration_s: float = 30.0
    outage_supply_c: float = 38.0
    outage_ramp_s: float = 5.0
    # --- a building whose return runs high for a while (a bad secondary: the return
    #     temperature at full flow is return_high_c instead of return_nominal_c)
    return_high_after_s: float | None = None
    return_high_duration_s: float = 300.0
    return_high_c: float = 55.0
    # --- meter counters (start values, rollover as the sim-heat-meter profile)
    energy0_kwh: float | None = None  # None: seeded start value
    volume0_m3: float | None = None
    energy_rollover_kwh: float = 10_000_000.0
    volume_rollover_m3: float = 100_000.0
    counter_reset_after_s: float | None = None  # one energy-counter reset
    # --- request-level faults (fraction of read requests, each kind)
    p_timeout: float = 0.0
    p_bad_crc: float = 0.0  # RTU only; on TCP that share of requests is answered normally
    p_exception: float = 0.0
    p_absurd: float = 0.0
    p_mbus_cut: float = 0.0  # M-Bus only: the reply stops half way
    p_mbus_multi: float = 0.0  # M-Bus only: the reading comes in two telegrams
    p_mbus_noise: float = 0.0  # M-Bus only: line noise (3 bytes) before the reply
    # --- meter replacement: new identity, registers restart at these values
    meter_swap_after_s: float | None = None
    swap_energy_kwh: float = 2.0
    swap_volume_m3: float = 0.03

    # --- heat-meter faults (simulator.meter_faults): drift | swapped | stuck-flow |
    #     open-sensor, from meter_fault_after_s on; meter_drift is the drift's fraction
    meter_fault: str | None = None
    meter_fault_after_s: float = 3600.0
    meter_drift: float = 0.06


_STEADY = ScenarioParams(name="steady")

SCENARIOS: dict[str, ScenarioParams] = {
    "steady": _STEADY,
    "winter-peak": replace(
        _STEADY,
        name="winter-peak",
        outdoor_mean_c=-24.0,
        outdoor_amp_c=3.0,
        outdoor_noise_c=1.5,
        ua_kw_k=7.4,
        return_nominal_c=45.0,
        dhw_prob=0.5,
        dhw_power_kw=(10.0, 35.0),
    ),
    "faults": replace(
        _STEADY,
        name="faults",
        counter_reset_after_s=45.0,
        p_timeout=0.03,
        p_bad_crc=0.03,
        p_exception=0.03,
        p_absurd=0.03,
        p_mbus_cut=0.03,
        p_mbus_multi=0.05,
        p_mbus_noise=0.03,
    ),
    "outage": replace(_STEADY, name="outage", outage_after_s=20.0, outage_duration_s=30.0),
    "low-dp": replace(_STEADY, name="low-dp", dp_nominal_kpa=60.0, dp_load_drop_kpa=40.0),
    "meter-swap": replace(_STEADY, name="meter-swap", meter_swap_after_s=30.0),
    "meter-drift": replace(
        _STEADY, name="meter-drift", meter_fault="drift", meter_fault_after_s=0.0
    ),
    "swapped-sensors": replace(_STEADY, name="swapped-sensors", meter_fault="swapped"),
    "stuck-flow": replace(_STEADY, name="stuck-flow", meter_fault="stuck-flow"),
    "open-sensor": replace(_STEADY, name="open-sensor", meter_fault="open-sensor"),
}
_SLOW: dict[str, Any] = dict(
    stroke_s=90.0,
    deadband_pct=0.5,
    valve_characteristic="equal-percentage",
    meter_update_s=10.0,
    meter_lag_s=5.0,
)
SCENARIOS["winter-peak-slow"] = replace(SCENARIOS["winter-peak"], name="winter-peak-slow", **_SLOW)
SCENARIOS["winter-peak-slower"] = replace(
    SCENARIOS["winter-peak-slow"], name="winter-peak-slower", stroke_s=180.0, meter_update_s=60.0
)
SCENARIOS["steady-slow"] = replace(_STEADY, name="steady-slow", **_SLOW)
SCENARIOS["return-high"] = replace(_STEADY, name="return-high", return_high_after_s=60.0)


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def get_scenario(name: str, **overrides: Any) -> ScenarioParams:
    """The parameters of scenario ``name``, with fields replaced by ``overrides``."""
    try:
        base = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}") from None
    return replace(base, **overrides) if overrides else base
