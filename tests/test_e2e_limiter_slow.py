"""End to end for the limiter on real hardware's terms: the simulator over Modbus TCP
with a slow actuator and a slowly refreshing meter, the agent's whole pipeline, a real
Mosquitto. In-process on a shared scaled clock (tests/support/scaled.py) where only
simulated time matters; real processes where the agent is killed."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.records import stored, truth_flow_avg, ts_of
from tests.support.rig import simulator, start_agent, stop, wait_until, write_config
from tests.support.scaled import run_scaled

LIMIT = 2.5


@pytest.mark.slow
def test_slow_actuator_holds_the_limit_in_every_full_period(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """90 s full stroke, 0.5 % deadband, equal-percentage valve, meter refreshed every 10 s
    with a 5 s lag; 300 s periods. Every full period after the one the limiter engaged
    in stays at the limit by the simulator's truth."""
    period = 300
    truth = asyncio.run(
        run_scaled(
            tmp_path,
            "winter-peak-slow",
            5 * period,
            period,
            f"flow_limit_m3h = {LIMIT}\nenforce = true\n",
            '[limiter]\nstroke_s = 90\nvalve_characteristic = "equal-percentage"\n',
            mqtt_url=mosquitto.url,
        )
    )
    recs = [r for r in stored(tmp_path, "interval") if r["device"] == "hm1"][1:]
    assert len(recs) >= 3, recs
    for r in recs:
        avg = truth_flow_avg(truth, ts_of(r["start"]), ts_of(r["end"]))
        assert 0.95 * LIMIT <= avg <= 1.01 * LIMIT, (r["start"], avg)
        assert "limited" in r["flags"]
    # the valve really was slow: the stroke limit lagged the written limit
    lag = [x for x in truth if abs(x["stroke_limit_pct"] - x["valve_limit_pct"]) > 2.0]
    assert lag, "the actuator never travelled"
    kinds = [e["kind"] for e in stored(tmp_path, "event")]
    assert "flow_limit_enforced" in kinds
    assert not [k for k in kinds if k == "flow_limit_exceeded"][1:], kinds  # the first at most


@pytest.mark.slow
def test_return_limit_engages_and_releases(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`return-high`: the building returns at 55 C from 60 s for 300 s. With
    `return_max_c = 50` the limiter throttles until the return is at the limit, and
    releases when it has been back below for a minute; the flow never exceeds the
    contract."""
    truth = asyncio.run(
        run_scaled(
            tmp_path,
            "return-high",
            600,
            60,
            f"flow_limit_m3h = {LIMIT}\nenforce = true\n",
            '[limiter]\nreturn_max_c = 50\nvalve_characteristic = "linear"\n',
            mqtt_url=mosquitto.url,
        )
    )
    events = stored(tmp_path, "event")
    kinds = [e["kind"] for e in events]
    assert kinds.count("return_limit_engaged") == 1, kinds
    assert kinds.count("return_limit_released") == 1, kinds
    eng = next(e for e in events if e["kind"] == "return_limit_engaged")
    rel = next(e for e in events if e["kind"] == "return_limit_released")
    assert eng["value"] > 50 and eng["threshold"] == 50
    t_eng, t_rel = ts_of(eng["time"]), ts_of(rel["time"])
    t0 = truth[0]["t"]
    assert 60 + 60 - 2 <= t_eng - t0 <= 60 + 60 + 10  # after return_hold_s above
    assert t_rel - t0 >= 60 + 300  # not before the building recovered
    late = [x["return_c"] for x in truth if t_eng + 120 <= x["t"] <= t0 + 355]
    assert late and sum(late) / len(late) <= 51.0, late
    assert max(x["flow_m3h"] for x in truth) <= LIMIT * 1.25


@pytest.mark.slow
def test_kill_9_mid_period_keeps_the_budget(tmp_path: Path) -> None:
    """Real processes on the wall clock, 60 s periods, a 10 s actuator and a meter
    refreshed every 2 s. The agent is killed with SIGKILL 15 s into a period and stays
    down long enough for the actuator's watchdog (5 s) to release the valve, so the
    building takes twice the contract for a while. Restarted, the agent loads the saved
    limiter state, counts that volume from the registers and still ends the period at
    the limit (a fresh estimate from the current flow would throttle far below it)."""
    period = 60
    with simulator(
        tmp_path, "winter-peak", "--stroke-s", "10", "--meter-update-s", "2", "--seed", "1"
    ) as sim:
        cfg = write_config(
            tmp_path,
            sim.port,
            "mqtt://127.0.0.1:1",
            period,
            f"flow_limit_m3h = {LIMIT}\nenforce = true\n",
            '[limiter]\nwatchdog_s = 5\nstroke_s = 10\nvalve_characteristic = "linear"\n',
        )
        log = tmp_path / "agent.log"
        agent = start_agent(cfg, log)
        try:
            assert wait_until(
                lambda: any(x["valve_limit_pct"] < 100 for x in sim.truth_lines()), 60
            ), "the agent never limited"
            # into the next period but one, 15 s
            now = time.time()
            kill_at = (math.floor(now / period) + 2) * period + 15
            time.sleep(kill_at - time.time())
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            killed = time.time()
            assert wait_until(
                lambda: any(
                    x["t"] > killed and x["valve_limit_pct"] == 100.0 for x in sim.truth_lines()
                ),
                15,
            ), "the watchdog did not release"
            time.sleep(4)
            agent = start_agent(cfg, log)
            end = (math.floor(kill_at / period) + 1) * period
            time.sleep(max(0.0, end - time.time()) + 8)
        finally:
            code = stop(agent)
        truth = sim.truth_lines()
    assert code == 0
    assert "limiter state restored" in log.read_text()
    start = math.floor(kill_at / period) * period
    avg = truth_flow_avg(truth, start, start + period)
    down = [x for x in truth if killed < x["t"] < killed + 8 and x["valve_limit_pct"] == 100.0]
    assert down, "the valve was not released while the agent was down"
    assert 0.95 * LIMIT <= avg <= 1.02 * LIMIT, avg
