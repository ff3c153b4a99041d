"""``dh-agent poll --once`` prints values with the precision their register has."""

from __future__ import annotations

from dataclasses import replace

from agent.poll import precise, values_json
from drivers.profile import load_profile
from drivers.types import Quality, Value

HM = load_profile("sim-heat-meter")


def test_integer_registers_round_to_their_scale() -> None:
    assert precise(82.46000000000001, HM.register("supply_c")) == 82.46  # scale 0.01
    assert precise(1234.5000000001, HM.register("energy_kwh")) == 1234.5  # scale 0.1
    assert precise(12.345000000002, HM.register("volume_m3")) == 12.345  # scale 0.001
    assert precise(7.0000001, HM.register("status")) == 7.0  # scale 1
    offset = replace(HM.register("supply_c"), scale=1.0, offset=0.5)
    assert precise(20.50000000001, offset) == 20.5  # the offset's decimals count too


def test_floats_keep_seven_significant_digits() -> None:
    flow = HM.register("flow_m3h")
    assert flow.type == "f32"
    assert precise(1.2453932762145996, flow) == 1.245393
    assert precise(1234.5678912, flow) == 1234.568
    assert precise(0.0, flow) == 0.0


def test_values_of_no_register_and_non_finite_stay() -> None:
    assert precise(1.23456789012, None) == 1.23456789012
    assert precise(float("inf"), HM.register("supply_c")) == float("inf")
    out = values_json(
        {"supply_c": Value(82.46000000000001, "C"), "extra": Value(0.1 + 0.2, "x", Quality.FAULT)},
        HM,
    )
    assert out["supply_c"] == {"value": 82.46, "unit": "C", "quality": "good"}
    assert out["extra"]["value"] == 0.1 + 0.2 and out["extra"]["quality"] == str(Quality.FAULT)
