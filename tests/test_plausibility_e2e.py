"""The plausibility checks in a running agent: dh-sim with a meter fault, dh-agent run,
Mosquitto; the event must be on the signed event stream with evidence matching the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.records import stored
from tests.support.rig import simulator, start_agent, stop, wait_until, write_config

FAST = (
    "[plausibility]\nsensor_after_s = 3\nswap_after_s = 5\nend_after_s = 5\nmin_energy_kwh = 0\n\n"
)


def run(tmp: Path, broker: Mosquitto, scenario: str, kind: str) -> dict[str, Any]:
    with simulator(tmp, scenario, "--meter-fault-after-s", "8") as sim:
        cfg = write_config(tmp, sim.port, broker.url, period_s=10, extra=FAST)
        agent = start_agent(cfg, tmp / "agent.log")
        try:

            def found() -> bool:
                return (tmp / "agent.db").exists() and any(
                    e["kind"] == kind for e in stored(tmp, "event")
                )

            assert wait_until(found, 90, every=1.0), (tmp / "agent.log").read_text()[-3000:]
        finally:
            assert stop(agent) == 0
        truth = [json.loads(x) for x in sim.truth.read_text().splitlines() if x.endswith("}")]
    evs = [e for e in stored(tmp, "event") if e["kind"] == kind]
    assert len(evs) == 1
    plaus = {"temp_sensor_fault", "temp_sensors_swapped", "flow_sensor_stuck",
             "meter_drift_suspected", "meter_register_decrease"}  # fmt: skip
    assert [e["kind"] for e in stored(tmp, "event") if e["kind"] in plaus] == [kind]
    ev = evs[0]
    ev["_truth"] = [t for t in truth if t.get("meter_fault") not in (None, "none")]
    assert ev["_truth"], "the fault is in the truth log"
    return ev


@pytest.mark.slow
def test_open_sensor_in_a_running_agent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    ev = run(tmp_path, mosquitto, "open-sensor", "temp_sensor_fault")
    assert ev["sensor"] == "supply" and ev["reading"] == "open"
    assert ev["value"] == pytest.approx(ev["_truth"][0]["meter_supply_c"], rel=0.01)


@pytest.mark.slow
def test_swapped_sensors_in_a_running_agent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    ev = run(tmp_path, mosquitto, "swapped-sensors", "temp_sensors_swapped")
    near = min(ev["_truth"], key=lambda t: abs(t["meter_supply_c"] - ev["supply_c"]))
    assert ev["supply_c"] == pytest.approx(near["return_c"], abs=0.5)
    assert ev["return_c"] == pytest.approx(near["supply_c"], abs=0.5)
