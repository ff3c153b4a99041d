"""Issue 13 item 2: a full disk under a running agent, and an agent started on a full disk
or on a corrupt database. Real processes (simulator, `dh-agent run`, Mosquitto) and a real
full filesystem (a small tmpfs; the test is skipped where it cannot be mounted)."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

from tests.support.disk import fill, small_disk
from tests.support.mosquitto import Mosquitto
from tests.support.records import stored
from tests.support.rig import simulator, start_agent, stop, wait_until, write_config
from tests.support.uplink_kit import Collector

PERIOD = 5
SITE = "test-site"


def one_record_per_period(bodies: list[dict[str, Any]], device: str) -> list[str]:
    starts = [b["start"] for b in bodies if b["device"] == device]
    assert len(starts) == len(set(starts)), f"{device}: a period recorded twice"
    ts = sorted(time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) for s in starts)
    gaps = [b - a for a, b in itertools.pairwise(ts) if b - a != PERIOD]
    assert not gaps, f"{device}: periods missing between records: {gaps}"
    return starts


def test_a_full_disk_degrades_and_recovers_without_loss(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sub = Collector(mosquitto.port, client_id="sub", base=f"dh/v1/{SITE}")
    with small_disk(tmp_path / "disk") as disk, simulator(tmp_path, "steady") as sim:
        cfg = write_config(tmp_path, sim.port, mosquitto.url, PERIOD)
        cfg.write_text(cfg.read_text().replace('path = "agent.db"', 'path = "disk/agent.db"'))
        log = tmp_path / "agent.log"
        p = start_agent(cfg, log)
        try:
            assert wait_until(lambda: len(sub.envelopes("interval")) >= 6, 60), log.read_text()
            filler = fill(disk)
            t_full = time.monotonic()
            # degraded: still polling and publishing telemetry that says so
            assert wait_until(
                lambda: any(
                    e["body"].get("storage", {}).get("degraded") for e in sub.envelopes("telemetry")
                ),
                40,
            ), log.read_text()[-3000:]
            n_tel = len(sub.envelopes("telemetry"))
            time.sleep(3 * PERIOD)
            assert p.poll() is None, log.read_text()[-3000:]
            assert len(sub.envelopes("telemetry")) > n_tel, "telemetry stopped"
            filler.unlink()
            assert wait_until(
                lambda: any(e["body"].get("kind") == "storage_recovered"
                            for e in sub.envelopes("event")),
                60,
            ), log.read_text()[-3000:]  # fmt: skip
            degraded_s = time.monotonic() - t_full
            time.sleep(3 * PERIOD)
        finally:
            code = stop(p)
        text = log.read_text()
        assert code == 0, text[-3000:]
        bodies = stored(tmp_path, "interval", db=disk / "agent.db", chained=True, readonly=True)
    sub.close()
    for dev in ("hm1", "dp1", "act1"):
        starts = one_record_per_period(bodies, dev)
        assert len(starts) >= degraded_s / PERIOD, (dev, len(starts), degraded_s)
    kinds = [e["body"]["kind"] for e in sub.envelopes("event")]
    assert "storage_degraded" in kinds and "storage_recovered" in kinds
    # nothing was re-published over and over (the old drain: hundreds of times each)
    seqs = [e["seq"] for e in sub.envelopes("interval")]
    assert max(seqs.count(s) for s in set(seqs)) <= 2
    assert text.count("Traceback") <= 2, text[-3000:]
    assert text.count("degraded mode") == 1


def test_the_agent_starts_on_a_full_disk_and_on_a_corrupt_database(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Start-up with the disk full (the database cannot even be opened): polling and
    telemetry run, records follow once space returns. A corrupt file is kept aside."""
    sub = Collector(mosquitto.port, client_id="sub", base=f"dh/v1/{SITE}")
    with small_disk(tmp_path / "disk") as disk, simulator(tmp_path, "steady") as sim:
        cfg = write_config(tmp_path, sim.port, mosquitto.url, PERIOD)
        cfg.write_text(cfg.read_text().replace('path = "agent.db"', 'path = "disk/agent.db"'))
        log = tmp_path / "agent.log"
        p = start_agent(cfg, log)
        assert wait_until(lambda: len(sub.envelopes("interval")) >= 3, 60), log.read_text()
        assert stop(p) == 0
        filler = fill(disk)
        p = start_agent(cfg, log)
        try:
            assert wait_until(lambda: len(sub.envelopes("telemetry")) >= 8, 60), log.read_text()
            assert p.poll() is None
            filler.unlink()
            assert wait_until(
                lambda: any(e["body"].get("kind") == "storage_recovered"
                            for e in sub.envelopes("event")),
                60,
            ), log.read_text()[-3000:]  # fmt: skip
            time.sleep(2 * PERIOD)
        finally:
            assert stop(p) == 0, log.read_text()[-3000:]
        bodies = stored(tmp_path, "interval", db=disk / "agent.db", chained=True, readonly=True)
        for dev in ("hm1", "dp1", "act1"):
            one_record_per_period(bodies, dev)
        # a corrupt database: kept aside, a new one made, the agent runs
        db = disk / "agent.db"
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{db}{suffix}")
        db.write_bytes(b"this is not a database" * 100)
        p = start_agent(cfg, log)
        try:
            assert wait_until(
                lambda: any(e["body"].get("kind") == "storage_replaced"
                            for e in sub.envelopes("event")),
                60,
            ), log.read_text()[-3000:]  # fmt: skip
        finally:
            assert stop(p) == 0
        kept = [f for f in os.listdir(disk) if f.startswith("agent.db.corrupt-")]
        assert kept and (disk / kept[0]).read_bytes() == b"this is not a database" * 100
    sub.close()
