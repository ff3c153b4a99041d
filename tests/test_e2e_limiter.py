"""End to end, in one process at simulated speed: the simulator (real Modbus TCP) and the
agent's whole pipeline on a shared scaled clock. Limiter on `winter-peak`, outage and
low-dp events, read back from the agent's store."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.records import stored, truth_flow_avg, truth_lines, ts_of
from tests.support.rig import free_port, simulator, start_agent, wait_until, write_config
from tests.support.scaled import run_scaled

LIMIT = 2.5


def full_periods(recs: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """Records of one device minus the first (it may start before the limiter engaged)."""
    out = [r for r in recs if r["device"] == device]
    return out[1:]


@pytest.mark.parametrize("enforce", [True, False])
def test_winter_peak_is_held_at_the_contract(tmp_path: Path, enforce: bool) -> None:
    period = 60
    truth = asyncio.run(
        run_scaled(
            tmp_path,
            "winter-peak",
            6 * period,
            period,
            f"flow_limit_m3h = {LIMIT}\nenforce = {'true' if enforce else 'false'}\n",
        )
    )
    recs = full_periods(stored(tmp_path, "interval"), "hm1")
    assert len(recs) >= 4
    events = stored(tmp_path, "event")
    kinds = [e["kind"] for e in events]
    for r in recs:
        s, e = ts_of(r["start"]), ts_of(r["end"])
        true_avg = truth_flow_avg(truth, s, e)
        if enforce:
            assert r["flow_avg_m3h"] <= 1.05 * LIMIT, r
            assert r["flow_avg_m3h"] >= 0.85 * LIMIT, r
            assert 0.85 * LIMIT <= true_avg <= 1.05 * LIMIT, (r["start"], true_avg)
            assert "limited" in r["flags"]
        else:
            assert r["limit_exceeded"] is True and r["flow_avg_m3h"] > LIMIT
            assert true_avg > LIMIT
    if enforce:
        assert "flow_limit_enforced" in kinds
    else:
        assert "flow_limit_exceeded" in kinds
        assert all(x["valve_limit_pct"] == 100.0 for x in truth)


def test_outage_makes_one_start_and_one_end_event(tmp_path: Path) -> None:
    asyncio.run(
        run_scaled(
            tmp_path,
            "outage",
            120,
            60,
            "enforce = false\n",
            "[delivery]\ndebounce_s = 3\n",
        )
    )
    events = stored(tmp_path, "event")
    starts = [e for e in events if e["kind"] == "heat_outage_start"]
    ends = [e for e in events if e["kind"] == "heat_outage_end"]
    assert len(starts) == 1 and len(ends) == 1, [e["kind"] for e in events]
    truth = truth_lines(tmp_path / "truth.jsonl")
    cold = [x["t"] for x in truth if x["supply_c"] < 40.0]
    true_duration = cold[-1] - cold[0] + 1
    # two poll intervals of the simulated clock (1 s each)
    assert abs(ends[0]["duration_s"] - true_duration) <= 2.0 + 1.0, (ends[0], true_duration)


def test_low_dp_makes_a_dp_low_event(tmp_path: Path) -> None:
    asyncio.run(
        run_scaled(tmp_path, "low-dp", 90, 60, "enforce = false\n", "[delivery]\ndebounce_s = 3\n")
    )
    kinds = [e["kind"] for e in stored(tmp_path, "event")]
    assert kinds.count("dp_low") == 1, kinds
    dp = [r for r in stored(tmp_path, "interval") if r["device"] == "dp1"]
    assert dp and dp[-1]["dp_min_kpa"] < 60.0


def test_agent_killed_mid_limit_releases_within_the_actuator_watchdog(tmp_path: Path) -> None:
    """Real processes on the wall clock: the agent limits, is killed with SIGKILL, and the
    actuator's own watchdog (set by the agent to limiter.watchdog_s) releases the valve."""
    wd = 6
    with simulator(tmp_path, "winter-peak") as sim:
        cfg = write_config(
            tmp_path,
            sim.port,
            f"mqtt://127.0.0.1:{free_port()}",
            60,
            f"flow_limit_m3h = {LIMIT}\nenforce = true\n",
            f"[limiter]\nwatchdog_s = {wd}\n",
        )
        agent = start_agent(cfg, tmp_path / "agent.log")
        try:
            assert wait_until(
                lambda: any(x["valve_limit_pct"] < 100 for x in sim.truth_lines()), 30
            ), "the agent never limited"
            time.sleep(3)
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
        killed = time.time()
        assert wait_until(
            lambda: any(
                x["t"] > killed and x["valve_limit_pct"] == 100.0 for x in sim.truth_lines()
            ),
            wd + 5,
        )
        truth = sim.truth_lines()
    released = min(x["t"] for x in truth if x["t"] > killed and x["valve_limit_pct"] == 100.0)
    assert released - killed <= wd + 1.0, released - killed
    # the limit was still in force after the kill, until the watchdog released it
    assert any(killed < x["t"] < released and x["valve_limit_pct"] < 100 for x in truth)
