"""dh-sim: the meter simulator (contract section 6).

First stdout line (flushed): {"tcp": "HOST:PORT" | null, "rtu": "/dev/pts/N" | null,
"mbus": "/dev/pts/N" | null}.
Runs until SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from simulator.scenarios import get_scenario, scenario_names
from simulator.server import SimServer


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host.strip("[]"), p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dh-sim",
        description=(
            "District-heating substation simulator: Modbus unit 1 heat meter, unit 2 "
            "pressure-difference sensor, unit 3 valve actuator (profiles sim-heat-meter, "
            "sim-dp-sensor, sim-actuator). Prints one JSON line "
            '{"tcp": "HOST:PORT"|null, "rtu": "/dev/pts/N"|null, "mbus": "/dev/pts/N"|null}, '
            "then serves until SIGTERM/SIGINT."
        ),
    )
    ap.add_argument(
        "--tcp",
        type=_hostport,
        metavar="HOST:PORT",
        help="serve Modbus TCP here (port 0 = any free port). Default: 127.0.0.1:0 "
        "when neither --tcp nor --rtu-pty is given; none when only --rtu-pty is given",
    )
    ap.add_argument(
        "--rtu-pty", action="store_true", help="serve Modbus RTU on a new pseudo-terminal"
    )
    ap.add_argument(
        "--mbus-pty",
        action="store_true",
        help="serve the heat meter as a wired M-Bus slave (primary address 1) on a new "
        "pseudo-terminal",
    )
    ap.add_argument(
        "--mbus-baud",
        type=int,
        choices=[300, 2400, 9600],
        help="M-Bus: emulate the line time of this baud rate (11 bits a byte)",
    )
    ap.add_argument(
        "--mbus-second-meter",
        action="store_true",
        help="M-Bus: a second meter at primary address 2 on the same line",
    )
    ap.add_argument(
        "--meter-swap-after-s", type=float, help="replace the heat meter once, s after start"
    )
    ap.add_argument("--scenario", default="steady", choices=scenario_names())
    ap.add_argument("--seed", type=int, default=0, help="all randomness derives from it")
    ap.add_argument("--truth", metavar="FILE", help="append one JSON line per simulated second")
    ap.add_argument("--watchdog-s", type=float, help="actuator watchdog at start (default 60 s)")
    ap.add_argument("--outage-after-s", type=float, help="outage: collapse starts (s after start)")
    ap.add_argument("--outage-duration-s", type=float, help="outage: how long it lasts (s)")
    ap.add_argument(
        "--counter-reset-after-s", type=float, help="reset the energy counter once, s after start"
    )
    ap.add_argument(
        "--fault-rate",
        type=float,
        help="per-kind fault probability per read request (faults scenario default 0.03)",
    )
    ap.add_argument(
        "--meter-fault-after-s", type=float, help="meter-fault scenarios: onset (s after start)"
    )
    ap.add_argument("--meter-drift", type=float, help="meter-drift: the fraction (default 0.06)")
    ap.add_argument("--step-s", type=float, default=0.1, help="plant update period (s)")
    ap.add_argument(
        "--stroke-s", type=float, help="actuator full-stroke time in s (0 = instant, the default)"
    )
    ap.add_argument("--deadband-pct", type=float, help="actuator deadband in %% (default 0)")
    ap.add_argument(
        "--valve",
        choices=("linear", "equal-percentage"),
        help="valve characteristic (default linear)",
    )
    ap.add_argument(
        "--meter-update-s",
        type=float,
        help="the meter refreshes its registers every N s (0 = live, the default)",
    )
    ap.add_argument(
        "--meter-lag-s", type=float, help="the meter's measurement lag in s (default 0)"
    )
    return ap


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if args.outage_after_s is not None:
        o["outage_after_s"] = args.outage_after_s
    if args.outage_duration_s is not None:
        o["outage_duration_s"] = args.outage_duration_s
    if args.counter_reset_after_s is not None:
        o["counter_reset_after_s"] = args.counter_reset_after_s
    if args.fault_rate is not None:
        r = args.fault_rate
        o.update(p_timeout=r, p_bad_crc=r, p_exception=r, p_absurd=r, p_mbus_cut=r)
    if args.watchdog_s is not None:
        o["watchdog_s"] = args.watchdog_s
    if args.meter_swap_after_s is not None:
        o["meter_swap_after_s"] = args.meter_swap_after_s
    for arg, key in (
        ("stroke_s", "stroke_s"),
        ("deadband_pct", "deadband_pct"),
        ("valve", "valve_characteristic"),
        ("meter_update_s", "meter_update_s"),
        ("meter_lag_s", "meter_lag_s"),
    ):
        if getattr(args, arg) is not None:
            o[key] = getattr(args, arg)

    if args.meter_fault_after_s is not None:
        o["meter_fault_after_s"] = args.meter_fault_after_s
    if args.meter_drift is not None:
        o["meter_drift"] = args.meter_drift
    return o


async def _serve(args: argparse.Namespace) -> int:
    tcp = args.tcp
    if tcp is None and not args.rtu_pty and not args.mbus_pty:
        tcp = ("127.0.0.1", 0)
    params = get_scenario(args.scenario, **_overrides(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(
        scenario=args.scenario,
        seed=args.seed,
        tcp=tcp,
        rtu_pty=args.rtu_pty,
        truth_path=args.truth,
        step_s=args.step_s,
        params=params,
        mbus_pty=args.mbus_pty,
        mbus_baud=args.mbus_baud,
        mbus_second=args.mbus_second_meter,
    ) as sim:
        sys.stdout.write(json.dumps(sim.endpoints()) + "\n")
        sys.stdout.flush()
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.watchdog_s is not None and not args.watchdog_s > 0:
        print("dh-sim: --watchdog-s must be positive", file=sys.stderr)
        return 2
    for name in ("stroke_s", "deadband_pct", "meter_update_s", "meter_lag_s"):
        v = getattr(args, name)
        if v is not None and not (v >= 0 and v < 1e6):
            print(f"dh-sim: --{name.replace('_', '-')} must be >= 0", file=sys.stderr)
            return 2
    if args.step_s <= 0:
        print("dh-sim: --step-s must be positive", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except (OSError, RuntimeError) as e:
        print(f"dh-sim: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
