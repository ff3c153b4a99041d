"""End to end over wired M-Bus: `dh-sim --mbus-pty` (2400 baud line time) and `dh-agent run`
with `transport = "mbus"` and a real Mosquitto (real processes, a real pseudo-terminal):
records match the simulator's truth within the meter's resolution and are signed and
published; `meter-swap` gives one `meter_replaced` and two conserved series; `faults`
gives counted failures and no crash (in-process, to read the device's counters)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.keys import keygen
from agent.runner import Agent
from agent.store import Store
from drivers.clock_sys import SystemClock
from drivers.mbus_device import MbusDevice
from simulator.scenarios import get_scenario
from simulator.server import SimServer
from tests.support.mosquitto import Mosquitto
from tests.support.records import stored, truth_at, truth_lines, ts_of
from tests.support.rig import BIN, start_agent, stop, wait_until

PERIOD = 5
OLD_ID, NEW_ID = "68135802", "68136913"  # simulator.mbus: the swap adds 1111


@contextmanager
def mbus_sim(tmp: Path, scenario: str, *extra: str) -> Iterator[tuple[str, Path]]:
    truth = tmp / "truth.jsonl"
    proc = subprocess.Popen(
        [
            *(str(BIN / "dh-sim"), "--mbus-pty", "--mbus-baud", "2400"),
            *("--scenario", scenario, "--truth", str(truth), *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["mbus"], truth
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(tmp: Path, port: str, mqtt_url: str, poll_s: float = 2.0) -> Path:
    if not (tmp / "agent.key").exists():
        keygen(tmp, "agent", False)
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[site]\nid = "mbus-site"\nperiod_s = {PERIOD}\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\ntelemetry_s = 2\n\n'
        '[keys]\nagent_key = "agent.key"\n\n'
        '[storage]\npath = "agent.db"\nflush_s = 2\n\n'
        "[contract]\nflow_limit_m3h = 2.5\nenforce = false\n\n"
        '[[devices]]\nname = "hm1"\nrole = "heat_meter"\ntransport = "mbus"\n'
        f'port = "{port}"\nbaudrate = 2400\naddress = 1\npoll_s = {poll_s}\n'
        "timeout_s = 0.5\n"
    )
    return cfg


def run_agent_with_verify(
    tmp: Path, mosquitto: Mosquitto, port: str, seconds: float, records: int
) -> list[dict[str, Any]]:
    """The agent runs until `records` interval records exist (or `seconds`); a head-end
    verifier listens meanwhile. Returns the verifier's lines."""
    cfg = write_config(tmp, port, mosquitto.url)
    ver = subprocess.Popen(
        [
            *(str(BIN / "dh-agent"), "verify", "--mqtt", mosquitto.url, "--site", "mbus-site"),
            *("--pubkey", str(tmp / "agent.pub"), "--seconds", str(seconds + 15)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert ver.stderr is not None
    assert "subscribed" in ver.stderr.readline()
    log = tmp / "agent.log"
    agent = start_agent(cfg, log)
    try:

        def enough() -> bool:
            if not (tmp / "agent.db").exists():
                return False
            st = Store(tmp / "agent.db")
            try:
                return len(st.messages("interval", 1, 10**9)) >= records
            finally:
                st.close()

        wait_until(enough, seconds, every=1.0)
        time.sleep(3)  # let the uplink publish the last ones
    finally:
        rc = stop(agent)
    ver.terminate()
    out, _ = ver.communicate(timeout=20)
    assert rc == 0, log.read_text()[-3000:]
    return [json.loads(x) for x in out.splitlines() if x.strip()]


@pytest.mark.slow
def test_winter_peak_over_mbus_matches_the_truth_signed_and_published(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with mbus_sim(tmp_path, "winter-peak") as (port, truth_file):
        published = run_agent_with_verify(tmp_path, mosquitto, port, 50, 6)
        truth = truth_lines(truth_file)
    chain = stored(tmp_path, "interval", chained=True)  # seq 1..N: a record's seq is its place
    recs = [{**r, "_seq": seq} for seq, r in enumerate(chain, 1) if r["device"] == "hm1"]
    assert len(recs) >= 5, len(recs)
    for a, b in itertools.pairwise(recs):
        assert ts_of(b["start"]) - ts_of(a["start"]) == PERIOD
        assert a["energy_end_kwh"] == b["energy_start_kwh"]
        assert a["volume_end_m3"] == b["volume_start_m3"]
    for r in recs:
        assert r["meter_id"] == OLD_ID
        assert "counter_reset" not in r["flags"] and "meter_error" not in r["flags"]
        # the meter's resolution (1 kWh, 0.01 m3) plus the plant's change during one read
        # (about 0.45 s on a 2400-baud line)
        for key, field, tol in (("energy_kwh", "energy", 1.2), ("volume_m3", "volume", 0.015)):
            for edge in ("start", "end"):
                got = r[f"{field}_{edge}_{key.split('_')[1]}"]
                want = truth_at(truth, ts_of(r[edge]), key)
                assert abs(got - want) <= tol, (r[edge], key, got, want)
    total = sum(r["energy_kwh"] for r in recs)
    true_total = truth_at(truth, ts_of(recs[-1]["end"]), "energy_kwh") - truth_at(
        truth, ts_of(recs[0]["start"]), "energy_kwh"
    )
    assert abs(total - true_total) <= 2.4, (total, true_total)
    # winter-peak is above the 2.5 m3/h contract (over all records: 0.01 m3 is 7.2 m3/h
    # in a 5 s period, so single records jump between 0 and 7.2)
    hours = len(recs) * PERIOD / 3600
    assert sum(r["volume_m3"] for r in recs) / hours > 2.5
    # every stored record was published and verified by the head-end
    seen = {p["seq"] for p in published if p.get("stream") == "interval" and p["ok"]}
    assert {r["_seq"] for r in recs} <= seen
    events = stored(tmp_path, "event", chained=True)
    sv = [e for e in events if e["kind"] == "meter_stored_values"]
    assert len(sv) == 1 and sv[0]["meter_id"] == OLD_ID  # once after the start, unchanged since
    assert {s["quantity"] for s in sv[0]["stored"]} >= {"energy", "volume", "date"}


@pytest.mark.slow
def test_meter_swap_gives_one_meter_replaced_and_two_conserved_series(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with mbus_sim(tmp_path, "meter-swap", "--meter-swap-after-s", "16") as (port, truth_file):
        run_agent_with_verify(tmp_path, mosquitto, port, 55, 8)
        truth = truth_lines(truth_file)
    events = stored(tmp_path, "event", chained=True)
    swaps = [e for e in events if e["kind"] == "meter_replaced"]
    assert len(swaps) == 1, [e["kind"] for e in events]
    ev = swaps[0]
    assert (ev["old_meter_id"], ev["new_meter_id"]) == (OLD_ID, NEW_ID)
    assert ev["old_energy_kwh"] > 1000 and ev["new_energy_kwh"] < 10  # near zero, restarted
    assert ev["new_volume_m3"] < 1
    recs = [r for r in stored(tmp_path, "interval", chained=True) if r["device"] == "hm1"]
    assert not any("counter_reset" in r["flags"] for r in recs)
    assert all(r["energy_kwh"] >= 0 and r["volume_m3"] >= 0 for r in recs)
    flagged = [i for i, r in enumerate(recs) if "meter_replaced" in r["flags"]]
    assert len(flagged) == 1, [r["flags"] for r in recs]
    k = flagged[0]
    before, after = recs[:k], recs[k + 1 :]
    assert before and after
    for side, mid in ((before, OLD_ID), (after, NEW_ID)):
        assert all(r["meter_id"] == mid for r in side)
        for a, b in itertools.pairwise(side):
            assert a["energy_end_kwh"] == b["energy_start_kwh"]
        diff = side[-1]["energy_end_kwh"] - side[0]["energy_start_kwh"]
        assert abs(sum(r["energy_kwh"] for r in side) - diff) < 1e-6
    assert recs[k]["meter_id"] == NEW_ID
    assert recs[k]["energy_start_kwh"] == recs[k - 1]["energy_end_kwh"]
    # nothing invented: the records' energy is at most what the plant delivered
    total = sum(r["energy_kwh"] for r in recs)
    delivered = truth_at(truth, ts_of(recs[-1]["end"]), "delivered_energy_kwh") - truth_at(
        truth, ts_of(recs[0]["start"]), "delivered_energy_kwh"
    )
    assert total <= delivered + 2.0, (total, delivered)


@pytest.mark.slow
def test_faults_are_counted_failures_and_no_crash(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """In one process (to read the device's counters): the agent's whole pipeline against
    the simulator's faulty M-Bus slave on a real pty."""

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        params = get_scenario("faults", p_timeout=0.06, p_bad_crc=0.06, p_mbus_cut=0.06)
        async with SimServer("faults", seed=5, tcp=None, mbus_pty=True, params=params) as sim:
            assert sim.mbus_path is not None
            cfg = load(write_config(tmp_path, sim.mbus_path, mosquitto.url, poll_s=0.5))
            agent = Agent(cfg, clock=SystemClock())
            task = asyncio.create_task(agent.run())
            await asyncio.sleep(22)
            dev = agent.pool.devices["hm1"]
            assert isinstance(dev, MbusDevice)
            counters = dict(dev.counters)
            faults = {k: sim.faults[k] for k in sim.faults if k.startswith("mbus_")}
            agent.stopping.set()
            await asyncio.wait_for(task, 30)
            return counters, faults

    counters, faults = asyncio.run(main())
    assert faults.get("mbus_timeout", 0) > 0 and faults.get("mbus_bad_checksum", 0) > 0
    assert counters["timeouts"] == faults.get("mbus_timeout", 0)
    assert counters["checksum_errors"] == faults.get("mbus_bad_checksum", 0)
    assert counters["bad_frames"] == faults.get("mbus_cut_short", 0)
    assert counters["polls"] >= 20
    recs = [r for r in stored(tmp_path, "interval", chained=True) if r["device"] == "hm1"]
    assert len(recs) >= 3
    for a, b in itertools.pairwise(recs):
        assert a["energy_end_kwh"] == b["energy_start_kwh"]
    if faults.get("mbus_status_error"):
        assert any("meter_error" in r["flags"] for r in recs)
