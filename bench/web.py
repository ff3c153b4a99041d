"""The technician's page (`dh-agent serve`): memory at rest and the time to serve the
48-hour plot page from a store holding three years of records.

Fills a store like bench/store_scale.py (``fill``: real aggregator records, signed and
stored through ``Store.commit_intervals``; a heat meter, a dp sensor and an actuator,
hourly, ``--years`` of them ending today), writes a live snapshot, starts
`dh-agent serve` as its own process, requests every page once, waits, and reads the
server's RSS (``rss_mb``, target <= 35; also its peak ``hwm_mb``). Then ``plot_ms``: the
median wall time of ``--runs`` requests of /plots (connect to last byte; target <= 300),
against a bare baseline in the same run, the median time of /style.css from the same
server (a static answer: the HTTP round trip alone), given as ``plot_ratio``.
Also ``advice_ms``: the first /advice (12 months of records decoded; cached afterwards).

    python -m bench.web [--years 3] [--runs 15] [--dir DIR]
Last line JSON: {"rss_mb": .., "plot_ms": .., ...}.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent import snapshot
from bench import store_scale
from bench.harness import proc_rss_mb
from drivers.types import Reading, Value
from tests.support.web import config_text, serve

DAY = 86400
PAGES = ("/", "/plots", "/events", "/advice", "/devices", "/style.css")
DEVICES = [("hm1", "heat_meter", "sim-heat-meter"), ("dp1", "dp_sensor", "sim-dp-sensor"),
           ("act1", "actuator", "sim-actuator")]  # fmt: skip


def get(port: int, path: str) -> tuple[int, int, float]:
    """(status, body bytes, seconds) of one GET, connect to the last byte."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), 60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    dt = time.perf_counter() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), len(body), dt


def write_live(work: Path, now: float) -> None:
    vals = {"flow_m3h": Value(1.9, "m3/h"), "supply_c": Value(85.0, "C")}
    devs = [
        snapshot.DeviceView(n, r, "tcp", p, "ok",
                            Reading(n, r, now, 0.0, True, True, dict(vals)), {"polls": 1})
        for n, r, p in DEVICES
    ]  # fmt: skip
    snap = snapshot.build_snapshot(
        site=store_scale.SITE, wall=now, mono=0.0, clock_synced=True, boot=1, pid=0,
        config_version=0, period_s=3600, contract={"flow_limit_m3h": 2.5}, delivery={},
        devices=devs, limiter=None, alarms=[], uplink=None, last_records={},
    )  # fmt: skip
    snapshot.write_atomic(work / "live.json", snapshot.dumps(snap))


def measure(work: Path, runs: int) -> dict[str, float]:
    with serve(work / "agent.toml") as srv:
        first: dict[str, float] = {}
        for path in PAGES:
            code, size, dt = get(srv.port, path)
            if code != 200:
                raise SystemExit(f"{path}: HTTP {code}")
            first[path] = dt
            print(f"{path}: {size} bytes in {dt * 1000:.1f} ms (first)")
        time.sleep(2.0)
        rss, hwm = proc_rss_mb(srv.proc.pid)
        plots = [get(srv.port, "/plots")[2] for _ in range(runs)]
        bare = [get(srv.port, "/style.css")[2] for _ in range(runs)]
    plot_ms = statistics.median(plots) * 1000
    bare_ms = statistics.median(bare) * 1000
    print(f"server RSS at rest {rss:.1f} MB (peak {hwm:.1f} MB)")
    print(f"/plots median {plot_ms:.1f} ms over {runs}, bare /style.css {bare_ms:.2f} ms")
    return {
        "rss_mb": round(rss, 1),
        "hwm_mb": round(hwm, 1),
        "plot_ms": round(plot_ms, 1),
        "bare_ms": round(bare_ms, 2),
        "plot_ratio": round(plot_ms / max(bare_ms, 1e-6), 1),
        "advice_ms": round(first["/advice"] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--years", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=None, help="keep (and reuse) the store here")
    args = ap.parse_args(argv)
    days = round(args.years * 365)
    with tempfile.TemporaryDirectory(prefix="dh-web-") as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "scale.db"
        now = time.time()
        if not db.exists():
            # the records end with today, so the last 48 hours are full
            store_scale.T0 = int(now // DAY * DAY - (days - 1) * DAY)
            n, fill_s = store_scale.fill(db, [(d, r) for d, r, _ in DEVICES], days, 300)
            print(f"stored {n} records in {fill_s:.0f} s, db {db.stat().st_size / 1e6:.1f} MB")
        config = config_text(store_scale.SITE, storage="scale.db")  # the pages' tests' site
        (work / "agent.toml").write_text(config)
        write_live(work, now)
        result = measure(work, args.runs)
    print(json.dumps({**result, "years": args.years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
