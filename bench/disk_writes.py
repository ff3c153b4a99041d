"""Bytes written to disk per hour of `dh-agent run` with 3 devices polled every second.

From /proc/<pid>/io write_bytes (what the kernel sends to the block layer for this
process), measured after a warm-up over at least 60 s and extrapolated to an hour.
The period is one hour as in production; the figure is what was measured, extrapolated
(a run shorter than the period contains no interval close: those add a few fsynced pages
an hour, and `--period-s 60` shows the worst case where every minute closes one).
Target: <= 2 MB per hour. Last line JSON: {"bytes_per_hour": ..}.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.harness import Rig, proc_io_write_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--period-s", type=int, default=3600)
    a = ap.parse_args()
    with Rig(period_s=a.period_s) as rig:
        agent = rig.start_agent()
        time.sleep(a.warmup)
        w0, t0 = proc_io_write_bytes(agent.pid), time.monotonic()
        time.sleep(a.seconds)
        w1, t1 = proc_io_write_bytes(agent.pid), time.monotonic()
        per_hour = (w1 - w0) / (t1 - t0) * 3600
        rc = rig.stop_agent()
    print(f"period {a.period_s} s: {w1 - w0} bytes written in {t1 - t0:.1f} s; agent exit {rc}")
    print(json.dumps({"bytes_per_hour": round(per_hour)}))


if __name__ == "__main__":
    main()
