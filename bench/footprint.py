"""Peak RSS and CPU per hour of `dh-agent run` with 3 simulated devices polled every
second (telemetry every 10 s), measured over at least 60 s after a warm-up.

Baselines in the same run:
- CPU: the bare pymodbus + paho script (``bench/bare_agent.py``) runs beside the agent over
  the same window, polling the same three simulated units every second and publishing the
  same telemetry every 10 s; ``cpu_ratio`` = agent CPU / bare CPU (target <= 2.0).
- Memory: a Python process that only imports the agent's dependencies
  (``baseline_rss_mb``), and the bare script's peak RSS (``bare_rss_mb``).

Targets: ``rss_mb`` <= 36 (absolute), ``cpu_ratio`` <= 2.0. Last line JSON:
{"rss_mb", "cpu_s_per_hour", "cpu_ratio", "bare_cpu_s_per_hour", "bare_rss_mb",
"baseline_rss_mb"}.
"""

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
        bare = rig.start_bare()
        time.sleep(a.warmup)
        if bare.poll() is not None:
            raise SystemExit(f"the bare baseline exited ({bare.returncode}): see bare.log")
        c0, b0, t0 = proc_cpu_s(agent.pid), proc_cpu_s(bare.pid), time.monotonic()
        peak = bare_peak = 0.0
        end = t0 + a.seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            peak = max(peak, proc_rss_mb(agent.pid)[1])
            bare_peak = max(bare_peak, proc_rss_mb(bare.pid)[1])
        c1, b1, t1 = proc_cpu_s(agent.pid), proc_cpu_s(bare.pid), time.monotonic()
        rc = rig.stop_agent()
    cpu_h = (c1 - c0) / (t1 - t0) * 3600
    bare_h = (b1 - b0) / (t1 - t0) * 3600
    print(f"baseline (imports only) peak RSS {base:.1f} MB; agent exit {rc}")
    print(f"bare pymodbus + paho: peak RSS {bare_peak:.1f} MB, CPU {b1 - b0:.2f} s")
    print(f"agent peak RSS {peak:.1f} MB, CPU {c1 - c0:.2f} s in {t1 - t0:.0f} s")
    print(
        json.dumps(
            {
                "rss_mb": round(peak, 1),
                "cpu_s_per_hour": round(cpu_h, 1),
                "cpu_ratio": round(cpu_h / bare_h, 2) if bare_h > 0 else None,
                "bare_cpu_s_per_hour": round(bare_h, 1),
                "bare_rss_mb": round(bare_peak, 1),
                "baseline_rss_mb": round(base, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
