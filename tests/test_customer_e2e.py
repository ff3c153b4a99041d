"""The customer's Modbus TCP interface of a running agent, read by Debian's mbpoll.

Real processes: dh-sim, dh-agent run (writing the live snapshot), Mosquitto, and
dh-agent customer; the client is mbpoll (nobody here wrote it). Values must match the
agent's own ``poll`` within the documented scaling; writes get exception 1, unknown
addresses exception 2; 200 parallel connections and a request flood leave the agent's
polling, records and limiter as they were without the flood, in the same run.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.rig import BIN, free_port, simulator, start_agent, stop, wait_until, write_config

pytestmark = pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed")


def mbpoll(port: int, ref: int, count: int, kind: str = "3:float", *extra: str) -> str:
    cmd = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-B", "-1", "-o", "3",
           "-r", str(ref), "-c", str(count), "-t", kind, "127.0.0.1", *extra]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def mbwrite(port: int, ref: int, kind: str, *vals: str) -> str:
    cmd = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "3",
           "-r", str(ref), "-t", kind, "127.0.0.1", *vals]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def values(out: str) -> dict[int, float]:
    """mbpoll lines ``[ref]: value`` -> {ref: value}."""
    return {int(a): float(b) for a, b in re.findall(r"^\[(\d+)\]:\s+(\S+)", out, re.M)}


def poll_once(cfg: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "dh-agent"), "poll", "--config", str(cfg), "--once"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    devs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {d["name"]: d for d in devs}


def pval(d: dict[str, Any], name: str) -> float:
    v = d["values"][name]
    return float(v["value"] if isinstance(v, dict) else v)


class Rig:
    def __init__(self, tmp: Path, broker: Mosquitto, sim_port: int) -> None:
        self.port = free_port()
        extra = (
            f'[customer]\nenabled = true\nlisten = "127.0.0.1:{self.port}"\n\n'
            "[limiter]\nwatchdog_s = 30\n\n"
        )
        self.cfg = write_config(
            tmp, sim_port, broker.url, period_s=5,
            contract="flow_limit_m3h = 2.5\nenforce = true\n", extra=extra,
        )  # fmt: skip
        self.agent = start_agent(self.cfg, tmp / "agent.log")
        self.customer = subprocess.Popen(
            [str(BIN / "dh-agent"), "customer", "--config", str(self.cfg)],
            stdout=(tmp / "customer.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.tmp = tmp

    def snapshot(self) -> dict[str, Any]:
        return dict(json.loads((self.tmp / "live.json").read_text()))

    def records(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [str(BIN / "dh-agent"), "export", "--config", str(self.cfg), "--from",
             "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z", "--format", "json"],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        return list(json.loads(out)) if out.strip() else []

    def close(self) -> None:
        stop(self.customer)
        assert stop(self.agent) == 0


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto):  # type: ignore[no-untyped-def]
    with simulator(tmp_path, "steady") as sim:
        r = Rig(tmp_path, mosquitto, sim.port)
        try:
            assert wait_until(lambda: (tmp_path / "live.json").exists(), 60)
            assert wait_until(lambda: values(mbpoll(r.port, 0, 2, "3")).get(1) == 0.0, 60)

            def settled() -> bool:  # the heat meter and dp sensor read well at least once
                head = values(mbpoll(r.port, 0, 10, "3"))
                hm = values(mbpoll(r.port, 100, 28, "3"))
                return head.get(6) == head.get(7) == 0 and hm.get(102) == hm.get(118) == 0

            assert wait_until(settled, 60, every=1.0)
            yield r
        finally:
            r.close()


@pytest.mark.slow
def test_mbpoll_reads_the_documented_registers(rig: Rig) -> None:
    head = values(mbpoll(rig.port, 0, 10, "3"))
    assert head[0] == 1 and head[1] == 0  # map version 1, snapshot live
    assert head[2] <= 5 and head[6] == 0 and head[8] == 1  # age, meter health ok, present
    hm = values(mbpoll(rig.port, 100, 28, "3"))  # raw words: quality + age of each value
    assert all(hm[100 + 4 * i + 2] == 0 for i in range(7)), hm  # quality good
    assert all(hm[100 + 4 * i + 3] <= 10 for i in range(7)), hm  # age (s)
    live = {}
    for i, name in enumerate(("energy_kwh", "volume_m3", "flow_m3h", "power_kw", "supply_c",
                              "return_c", "cooling_c")):  # fmt: skip
        live[name] = values(mbpoll(rig.port, 100 + 4 * i, 1, "3:float"))[100 + 4 * i]
    exact = values(mbpoll(rig.port, 140, 2, "4:int"))  # holding registers serve the same map
    polled = poll_once(rig.cfg)
    hm1 = polled["hm1"]
    # registers grow slowly: seconds apart they agree within a little
    assert live["energy_kwh"] == pytest.approx(pval(hm1, "energy_kwh"), abs=0.5)
    assert exact[140] / 10 == pytest.approx(pval(hm1, "energy_kwh"), abs=0.5)
    assert exact[142] / 1000 == pytest.approx(pval(hm1, "volume_m3"), abs=0.02)
    assert live["volume_m3"] == pytest.approx(pval(hm1, "volume_m3"), abs=0.02)
    assert live["supply_c"] == pytest.approx(pval(hm1, "supply_c"), abs=1.5)
    assert live["return_c"] == pytest.approx(pval(hm1, "return_c"), abs=1.5)
    assert live["cooling_c"] == pytest.approx(live["supply_c"] - live["return_c"], abs=1.5)
    assert 0 < live["flow_m3h"] < 8 and 0 < live["power_kw"] < 500
    dp = values(mbpoll(rig.port, 200, 1, "3:float"))[200]
    assert dp == pytest.approx(pval(polled["dp1"], "dp_kpa"), abs=10)
    # against the snapshot the values are exact to float32
    snap = rig.snapshot()
    lim = values(mbpoll(rig.port, 300, 4, "3"))
    assert lim[300] == 1 and lim[301] == 1  # limiter active, enforcing
    assert values(mbpoll(rig.port, 304, 1, "3:float"))[304] == 2.5
    assert snap["contract"]["flow_limit_m3h"] == 2.5
    assert wait_until(lambda: rig.snapshot()["last_records"].get("hm1"), 30)
    rec = values(mbpoll(rig.port, 400, 2, "3:int"))
    assert rec[400] % 5 == 0 and rec[400] > 1.6e9  # a period start, aligned


@pytest.mark.slow
def test_writes_and_unknown_addresses_are_refused(rig: Rig) -> None:
    out = mbwrite(rig.port, 304, "4", "7")  # write single register (FC 6)
    assert "Illegal function" in out, out
    out = mbwrite(rig.port, 300, "4", "1", "2")  # write multiple registers (FC 16)
    assert "Illegal function" in out, out
    out = mbwrite(rig.port, 0, "0", "1")  # write coil (FC 5)
    assert "Illegal function" in out, out
    assert "Illegal data address" in mbpoll(rig.port, 1000, 1, "3")
    assert "Illegal data address" in mbpoll(rig.port, 126, 4, "3")  # runs past the area
    # the limit the agent enforces is unchanged
    assert rig.snapshot()["contract"]["flow_limit_m3h"] == 2.5


def _flood(port: int, stop_at: float, counts: list[int]) -> None:
    req = struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 100, 28)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            while time.monotonic() < stop_at:
                s.sendall(req * 4)  # pipelined
                got = 0
                while got < 4 * (9 + 56):
                    chunk = s.recv(4096)
                    if not chunk:
                        return
                    got += len(chunk)
                counts[0] += 4
    except OSError:
        counts[1] += 1


def _counter(snap: dict[str, Any], dev: str, name: str) -> int:
    return int(snap["devices"][dev]["counters"].get(name, 0))


def _figures(
    rig: Rig, snap0: dict[str, Any], snap1: dict[str, Any]
) -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]:
    devs = list(snap1["devices"])
    polls = {n: _counter(snap1, n, "polls") - _counter(snap0, n, "polls") for n in devs}
    failed = {
        n: _counter(snap1, n, "polls_failed") - _counter(snap0, n, "polls_failed") for n in devs
    }
    recs = [r for r in rig.records() if r["device"] == "hm1"]
    return polls, failed, recs


@pytest.mark.slow
def test_200_connections_and_a_flood_leave_the_agent_untouched(rig: Rig) -> None:
    def phase(flood: bool, seconds: float = 30.0) -> tuple[dict[str, int], dict[str, int], int]:
        snap0, n0 = rig.snapshot(), len([r for r in rig.records() if r["device"] == "hm1"])
        counts = [0, 0]
        threads = []
        if flood:
            end = time.monotonic() + seconds
            threads = [
                threading.Thread(target=_flood, args=(rig.port, end, counts)) for _ in range(200)
            ]
            for t in threads:
                t.start()
        time.sleep(seconds)
        for t in threads:
            t.join(30)
        snap1 = rig.snapshot()
        polls, failed, recs = _figures(rig, snap0, snap1)
        if flood:
            assert counts[0] > 0, counts  # the flood was answered (within the rate)
        return polls, failed, len(recs) - n0

    quiet = phase(False)
    flooded = phase(True)
    for name, n in quiet[0].items():
        assert flooded[0][name] == pytest.approx(n, rel=0.25), (quiet, flooded)
        assert flooded[1][name] == quiet[1][name] == 0
    assert flooded[2] == pytest.approx(quiet[2], abs=1), (quiet, flooded)
    # records stay conserved and complete through the flood
    recs = [r for r in rig.records() if r["device"] == "hm1"]
    for a, b in itertools.pairwise(recs):
        assert b["energy_start_kwh"] == a["energy_end_kwh"], (a, b)
    assert all(r["samples"] >= 3 for r in recs[2:]), [r["samples"] for r in recs]
    snap = rig.snapshot()
    assert snap["limiter"]["active"] and not snap["limiter"]["failsafe"], snap["limiter"]
    # and the interface still answers
    assert values(mbpoll(rig.port, 0, 2, "3")).get(0) == 1
