"""The plant model behind dh-sim: one building substation on a district-heating network.

Pure: no I/O, no wall clock. Time is ``Plant.t`` (simulated Unix seconds), advanced only
by ``step``. Everything random comes from seeded generators keyed by (seed, channel,
time slot), so values at a given time do not depend on how the time was stepped and
two plants with the same scenario, seed, t0 and steps are identical.

Model (per instant):

* outdoor temperature: ``mean + amp * cos(2 pi (hour_utc - peak_hour) / 24)`` plus smooth
  seeded noise;
* building heat demand: ``ua * max(0, indoor - outdoor)`` plus domestic-hot-water draws
  (seeded, per 300 s slot);
* network: supply temperature from the curve 115 C at -32 C .. 70 C at +10 C (clamped),
  pressure difference ``dp_nominal - dp_load_drop * L - site_loss * Q^2`` with the network
  load ``L = clamp((18 - outdoor) / 50, 0, 1)``; ``outage`` blends the supply temperature
  to ``outage_supply_c`` for a while;
* demand flow: the flow that delivers the demand at the nominal cooling
  ``supply - return_nominal``: ``Qd = P * 3600 / (rho c dT)``, rho 975 kg/m3, c 4.19 kJ/kgK;
* valve: capacity at 100 % open ``kvs * sqrt(dp / 100 kPa)``; the written limit moves
  the actuator's stroke limit (``simulator.actuator``: full-stroke time, deadband;
  instant by default); delivered flow ``Q = min(Qd, capacity * fraction(stroke limit))``
  with the valve's characteristic (linear by default, or equal-percentage); position =
  the stroke that passes Q;
* throttled (``x = Q / Qd < 1``): the building's heat exchanger cools the smaller flow
  more: delivered power ``P = P_demand * x ** 0.4`` (``throttle_exponent``), i.e. cooling
  ``dT = dT_nominal * x ** -0.6``, the return never below the building's own return
  (``secondary_min_c + secondary_slope * (indoor - outdoor)``, about 29 C at 0 C outdoor);
  so the return temperature falls but the delivered heat stays below the demand;
* meter integrals: ``volume += Q dt / 3600``, ``energy += Q k dT / 3600 dt / 3600``
  (kWh), rolling over like the profile's counters; one reset in ``faults``; what the
  meter measures and counts passes through ``simulator.meter_faults.MeterModel`` (meter
  faults of the scenario, else transparent), and what it shows (``Plant.meter.shown``)
  lags and is refreshed every ``meter_update_s`` (``simulator.meter``; live by default);
* actuator watchdog: a limit not re-written for more than ``watchdog_s`` is released
  to 100 %.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from agent.plausibility_water import heat_coefficient
from simulator.actuator import Actuator, Valve
from simulator.meter import MeterDisplay
from simulator.meter_faults import MeterModel
from simulator.scenarios import ScenarioParams, get_scenario

RHO_KG_M3 = 975.0
C_KJ_KGK = 4.19
RHO_C = RHO_KG_M3 * C_KJ_KGK  # kJ / (m3 K)
DHW_SLOT_S = 300.0
MAX_SUBSTEP_S = 1.0


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class _ValueNoise:
    """Smooth seeded noise in about [-2.5, 2.5] (unit-variance knots, smoothstep blend)."""

    def __init__(self, seed: int, channel: str, knot_s: float) -> None:
        self._key = f"{seed}:{channel}"
        self._knot_s = knot_s
        self._cache: dict[int, float] = {}

    def _knot(self, k: int) -> float:
        v = self._cache.get(k)
        if v is None:
            if len(self._cache) > 64:
                self._cache.clear()
            v = random.Random(f"{self._key}:{k}").gauss(0.0, 1.0)
            self._cache[k] = v
        return v

    def __call__(self, t: float) -> float:
        u = t / self._knot_s
        k = math.floor(u)
        f = u - k
        s = f * f * (3.0 - 2.0 * f)
        a, b = self._knot(k), self._knot(k + 1)
        return a + (b - a) * s


class Plant:
    """One substation: building, network, valve with limit and watchdog, heat meter."""

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        t0: float = 0.0,
        *,
        params: ScenarioParams | None = None,
    ) -> None:
        self.params = params if params is not None else get_scenario(scenario)
        self.scenario = self.params.name
        self.seed = seed
        self.t0 = float(t0)
        self.t = float(t0)
        p = self.params
        self._n_out = _ValueNoise(seed, "outdoor", p.noise_knot_s)
        self._n_sup = _ValueNoise(seed, "supply", 120.0)
        self._n_dp = _ValueNoise(seed, "dp", 30.0)
        self._dhw_cache: dict[int, tuple[tuple[float, float, float], ...]] = {}
        rng = random.Random(f"{seed}:counters")
        e0 = rng.uniform(20_000.0, 400_000.0) if p.energy0_kwh is None else p.energy0_kwh
        v0 = rng.uniform(500.0, 9_000.0) if p.volume0_m3 is None else p.volume0_m3
        self.energy_kwh = e0 % p.energy_rollover_kwh  # the meter's exact register value
        self.volume_m3 = v0 % p.volume_rollover_m3
        self.delivered_energy_kwh = 0.0  # since t0, never reset or rolled over
        self.delivered_volume_m3 = 0.0
        self.watchdog_s = float(p.watchdog_s)
        self.actuator = Actuator(p.stroke_s, p.deadband_pct)
        self.valve = Valve(p.valve_characteristic, p.rangeability)
        self.meter = MeterDisplay(p.meter_update_s, p.meter_lag_s)
        self.valve_limit_pct = 100.0
        self.limit_active = False
        self._limit_written_at: float | None = None
        self._reset_done = False
        self.meter_swaps = 0  # meter replacements so far (meter-swap scenario)
        self.meter_model = MeterModel(
            p.meter_fault, p.meter_fault_after_s, p.meter_drift, self.t0
        )  # what the meter measures (faults)
        # faults injected by the plant itself (the server adds request-level ones)
        self.faults: Counter[str] = Counter()
        self.events: list[tuple[float, str]] = []
        # instantaneous state, set by _update_state
        self.outdoor_c = 0.0
        self.demand_kw = 0.0
        self.dhw_kw = 0.0
        self.supply_c = 0.0
        self.return_c = 0.0
        self.dp_kpa = 0.0
        self.capacity_m3h = 0.0
        self.demand_flow_m3h = 0.0
        self.flow_m3h = 0.0
        self.power_kw = 0.0
        self.position_pct = 0.0
        self.outage_factor = 0.0
        self._update_state()

    # --- inputs ------------------------------------------------------------------------

    def write_limit(self, pct: float) -> None:
        """The actuator's opening limit is written (clamped to 0..100 %); refreshes the
        watchdog at ``self.t``."""
        if not math.isfinite(pct):
            raise ValueError("limit must be finite")
        self.valve_limit_pct = _clamp(float(pct), 0.0, 100.0)
        self.actuator.command(self.valve_limit_pct, self.position_pct)
        self.limit_active = True
        self._limit_written_at = self.t
        self._update_state()

    def set_watchdog(self, seconds: float) -> None:
        """Change the watchdog time (the actuator's ``watchdog_s`` register)."""
        if not seconds > 0:
            raise ValueError("watchdog_s must be positive")
        self.watchdog_s = float(seconds)
        self._update_state()

    # --- time --------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        """Advance the physics and the register integrals by ``dt`` seconds (internally in
        sub-steps of at most 1 s; each integrates the state at its start)."""
        if dt < 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be a finite non-negative number, not {dt}")
        start = self.t
        done = 0.0
        while dt - done > 1e-12:
            h = min(MAX_SUBSTEP_S, dt - done)
            self._integrate(h)
            self.actuator.step(h)
            done += h
            self.t = start + done
            self._events()
            self._update_state(h)
        self.t = start + dt

    def _integrate(self, h: float) -> None:
        p = self.params
        dv = self.flow_m3h * h / 3600.0
        de = self.power_kw * h / 3600.0
        mv, me = self.meter_model.increments(dv, de, h)
        self.volume_m3 = (self.volume_m3 + mv) % p.volume_rollover_m3
        self.energy_kwh = (self.energy_kwh + me) % p.energy_rollover_kwh
        self.delivered_volume_m3 += dv
        self.delivered_energy_kwh += de

    def _events(self) -> None:
        p = self.params
        if (
            p.counter_reset_after_s is not None
            and not self._reset_done
            and self.t >= self.t0 + p.counter_reset_after_s
        ):
            self._reset_done = True
            self.energy_kwh = 0.0
            self.faults["counter_reset"] += 1
            self.events.append((self.t, "counter_reset"))
        if (
            p.meter_swap_after_s is not None
            and self.meter_swaps == 0
            and self.t >= self.t0 + p.meter_swap_after_s
        ):
            self.meter_swaps += 1  # a new meter: its registers start near zero
            self.energy_kwh = p.swap_energy_kwh
            self.volume_m3 = p.swap_volume_m3
            self.events.append((self.t, "meter_swap"))

    # --- state -------------------------------------------------------------------------

    def _dhw_draws(self, slot: int) -> tuple[tuple[float, float, float], ...]:
        draws = self._dhw_cache.get(slot)
        if draws is None:
            p = self.params
            rng = random.Random(f"{self.seed}:dhw:{slot}")
            out: list[tuple[float, float, float]] = []
            if rng.random() < p.dhw_prob:
                start = slot * DHW_SLOT_S + rng.uniform(0.0, DHW_SLOT_S)
                dur = rng.uniform(*p.dhw_duration_s)
                out.append((start, start + dur, rng.uniform(*p.dhw_power_kw)))
            draws = tuple(out)
            if len(self._dhw_cache) > 16:
                self._dhw_cache.clear()
            self._dhw_cache[slot] = draws
        return draws

    def _dhw_kw(self, t: float) -> float:
        slot = math.floor(t / DHW_SLOT_S)
        kw = 0.0
        for s in (slot - 1, slot):  # draws last at most one slot
            for a, b, pw in self._dhw_draws(s):
                if a <= t < b:
                    kw += pw
        return kw

    def _outage(self, t: float) -> float:
        p = self.params
        if p.outage_after_s is None:
            return 0.0
        rel = t - self.t0 - p.outage_after_s
        ramp = max(p.outage_ramp_s, 1e-9)
        if rel <= 0:
            return 0.0
        if rel < p.outage_duration_s:
            return min(1.0, rel / ramp)
        return max(0.0, 1.0 - (rel - p.outage_duration_s) / ramp)

    def _update_state(self, h: float = 0.0) -> None:
        p = self.params
        t = self.t
        if (
            self.limit_active
            and self._limit_written_at is not None
            and t - self._limit_written_at > self.watchdog_s
        ):
            self.valve_limit_pct = 100.0
            self.actuator.command(100.0)
            self.limit_active = False
            self.events.append((t, "watchdog_release"))
        hour = (t % 86400.0) / 3600.0
        out = (
            p.outdoor_mean_c
            + p.outdoor_amp_c * math.cos(2.0 * math.pi * (hour - p.outdoor_peak_hour) / 24.0)
            + p.outdoor_noise_c * self._n_out(t)
        )
        self.outdoor_c = out
        curve = p.supply_warm_c + (10.0 - out) * (p.supply_cold_c - p.supply_warm_c) / 42.0
        supply = _clamp(curve, p.supply_warm_c, p.supply_cold_c)
        supply += p.supply_noise_c * self._n_sup(t)
        f = self._outage(t)
        self.outage_factor = f
        supply = supply * (1.0 - f) + p.outage_supply_c * f
        load = _clamp((18.0 - out) / 50.0, 0.0, 1.0)
        dp_net = max(
            0.0, p.dp_nominal_kpa - p.dp_load_drop_kpa * load + p.dp_noise_kpa * self._n_dp(t)
        )
        self.dhw_kw = self._dhw_kw(t)
        demand_kw = p.ua_kw_k * max(0.0, p.indoor_c - out) + self.dhw_kw
        self.demand_kw = demand_kw
        ret_nom = p.return_nominal_c
        if p.return_high_after_s is not None:
            rel = t - self.t0 - p.return_high_after_s
            if 0.0 <= rel < p.return_high_duration_s:
                ret_nom = p.return_high_c
        dt_nom = max(supply - ret_nom, 2.0)
        k_nom = heat_coefficient(supply, supply - dt_nom)
        qd = min(demand_kw * 3600.0 / (k_nom * dt_nom), p.demand_flow_max_m3h)
        cap = p.kvs_m3h * math.sqrt(dp_net / 100.0)
        q = max(0.0, min(qd, cap * self.valve.fraction(self.actuator.limit_pct)))
        floor = p.secondary_min_c + p.secondary_slope * max(0.0, p.indoor_c - out)
        max_cooling = max(0.0, supply - floor)
        if q <= 1e-12:
            cooling = 0.0 if qd <= 1e-12 else max_cooling
            q = 0.0
        else:
            x = q / qd
            cooling = min(dt_nom * x ** (p.throttle_exponent - 1.0), max_cooling)
        self.supply_c = supply
        self.return_c = supply - cooling
        self.demand_flow_m3h = qd
        self.capacity_m3h = cap
        self.flow_m3h = q
        self.power_kw = q * heat_coefficient(supply, self.return_c) * cooling / 3600.0
        self.dp_kpa = max(0.0, dp_net - p.dp_site_loss_kpa_per_m3h2 * q * q)
        self.position_pct = self.valve.stroke(q / cap) if cap > 0 else 0.0
        mm = self.meter_model
        mm.update(t, q, self.power_kw, supply, self.return_c)
        self.meter.observe(
            t,
            h,
            {
                "flow_m3h": mm.flow_m3h,
                "power_kw": mm.power_kw,
                "supply_c": mm.supply_c,
                "return_c": mm.return_c,
                "delta_t_c": mm.delta_t_c,
                "volume_m3": self.volume_m3,
                "energy_kwh": self.energy_kwh,
            },
        )

    # --- output ------------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """The truth-line fields at ``self.t`` (exact values, before register resolution)."""
        return {
            "t": self.t,
            "energy_kwh": self.energy_kwh,
            "volume_m3": self.volume_m3,
            "flow_m3h": self.flow_m3h,
            "demand_flow_m3h": self.demand_flow_m3h,
            "supply_c": self.supply_c,
            "return_c": self.return_c,
            "dp_kpa": self.dp_kpa,
            "valve_limit_pct": self.valve_limit_pct,
            "stroke_limit_pct": self.actuator.limit_pct,
            "power_kw": self.power_kw,
            "demand_kw": self.demand_kw,
            "outdoor_c": self.outdoor_c,
            "position_pct": self.position_pct,
            "limit_active": 1.0 if self.limit_active else 0.0,
            "watchdog_s": self.watchdog_s,
            "delivered_energy_kwh": self.delivered_energy_kwh,
            "delivered_volume_m3": self.delivered_volume_m3,
            **self.meter_model.truth(),
        }
