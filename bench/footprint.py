"""Peak RSS and CPU per hour of `dh-agent run` with 3 simulated devices polled every
second, measured over at least 60 s after a warm-up. Targets: RSS <= 45 MB, CPU <= 36 s
per hour (1 % of a core). Last line JSON: {"rss_mb": .., "cpu_s_per_hour": ..}.
A bare baseline in the same run: a Python process that only imports the agent's
dependencies (its RSS is the floor any Python agent pays)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.harness import Rig, proc_cpu_s, proc_rss_mb


def baseline_rss() -> float:
    code = (
        "import pymodbus.client, aiomqtt, sqlite_utils;"
        "import cryptography.hazmat.primitives.asymmetric.ed25519;"
        "import pathlib;"
        "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    a = ap.parse_args()
    base = baseline_rss()
    with Rig(period_s=60) as rig:
        agent = rig.start_agent()
        time.sleep(a.warmup)
        c0, t0 = proc_cpu_s(agent.pid), time.monotonic()
        peak = 0.0
        end = t0 + a.seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            peak = max(peak, proc_rss_mb(agent.pid)[1])
        c1, t1 = proc_cpu_s(agent.pid), time.monotonic()
        rc = rig.stop_agent()
    cpu_h = (c1 - c0) / (t1 - t0) * 3600
    print(f"baseline (imports only) peak RSS {base:.1f} MB; agent exit {rc}")
    print(f"agent peak RSS {peak:.1f} MB, CPU {c1 - c0:.2f} s in {t1 - t0:.0f} s")
    print(
        json.dumps(
            {
                "rss_mb": round(peak, 1),
                "cpu_s_per_hour": round(cpu_h, 1),
                "baseline_rss_mb": round(base, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
