"""End to end: simulator + `dh-agent run` (real processes, Modbus TCP), killed with
SIGKILL at random moments and restarted; the interval records must still be complete,
exact and linked, and match the simulator's truth log."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from pathlib import Path

from tests.support.records import stored, truth_at, ts_of
from tests.support.rig import free_port, simulator, start_agent, stop, write_config

PERIOD = 5


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("DH_TEST_SEED", str(random.randrange(10**6))))
    print(f"DH_TEST_SEED={seed}")
    rnd = random.Random(seed)
    with simulator(tmp_path, "steady") as sim:
        # no broker: everything stays in the store, which is what is checked here
        cfg = write_config(tmp_path, sim.port, f"mqtt://127.0.0.1:{free_port()}", PERIOD)
        log = tmp_path / "agent.log"
        for _ in range(4):
            p = start_agent(cfg, log)
            time.sleep(rnd.uniform(3.0, 9.0))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            time.sleep(rnd.uniform(0.0, 4.0))  # the gateway is down for a while
        p = start_agent(cfg, log)
        time.sleep(3 * PERIOD)
        assert stop(p) == 0, log.read_text()[-3000:]
        truth = sim.truth_lines()
    bodies = stored(tmp_path, "interval", chained=True)
    for dev in ("hm1", "dp1", "act1"):
        recs = [b for b in bodies if b["device"] == dev]
        starts = [ts_of(r["start"]) for r in recs]
        assert len(recs) >= 6, (dev, len(recs))
        # every period exactly once, in order, none missing across the crashes
        assert starts == [starts[0] + k * PERIOD for k in range(len(recs))], (dev, starts)
    hm = [b for b in bodies if b["device"] == "hm1"]
    for a, b in itertools.pairwise(hm):
        assert a["energy_end_kwh"] == b["energy_start_kwh"]
        assert a["volume_end_m3"] == b["volume_start_m3"]
    total = sum(r["energy_kwh"] for r in hm)
    assert abs(total - (hm[-1]["energy_end_kwh"] - hm[0]["energy_start_kwh"])) < 1e-6
    assert any("no_data" in r["flags"] or "interpolated" in r["flags"] for r in hm) or all(
        r["samples"] > 0 for r in hm
    )
    # against the plant's exact integrals: the register's 0.1 kWh / 1 L resolution, plus
    # up to a second of plant time between the register and the reading, plus
    # interpolation across the downtime
    for r in hm:
        t = ts_of(r["start"])
        e_true = truth_at(truth, t, "energy_kwh")
        v_true = truth_at(truth, t, "volume_m3")
        assert abs(r["energy_start_kwh"] - e_true) <= 0.5, (
            r["start"],
            r["energy_start_kwh"],
            e_true,
        )
        assert abs(r["volume_start_m3"] - v_true) <= 0.01, (
            r["start"],
            r["volume_start_m3"],
            v_true,
        )
