"""`dh-agent demo`: the whole system on one machine.

The simulator (winter-peak by default), an MQTT broker (Mosquitto when installed, else
the embedded pure-Python amqtt), the agent with short periods and a 2.5 m3/h contract,
and a head-end subscriber that verifies every message that comes back from the broker.
A live terminal view (rich) shows readings, the last interval records, the limiter and
events; ``--plain`` prints one line per verified message instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiomqtt

from agent.broker import free_port, mosquitto_binary, spawn_mosquitto
from agent.config import load
from agent.jws import thumbprint
from agent.keys import keygen, load_public
from agent.protocol import DP_SENSOR, HEAT_METER
from agent.runner import Agent
from agent.verify import Checker
from agent.web.serve import start_page, stop_page
from simulator.layout import devices_toml
from simulator.server import SimServer

SITE = "demo-site"
PREFIX = "dh/v1"


class Broker:
    """Mosquitto on a free loopback port when installed, else embedded amqtt."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.embedded: Any = None
        self.kind = ""

    async def start(self) -> None:
        exe = mosquitto_binary()
        if exe:
            conf = self.work / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
            self.proc = spawn_mosquitto(exe, conf, self.work / "mosquitto.log")
            self.kind = "mosquitto"
        else:
            from amqtt.broker import Broker as AmqttBroker

            self.embedded = AmqttBroker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": True
                        }
                    },
                }
            )
            await self.embedded.start()
            self.kind = "amqtt (embedded)"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the MQTT broker did not start")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                await self.embedded.shutdown()


def write_config(work: Path, sim_addr: tuple[str, int], mqtt_port: int, period_s: int) -> Path:
    host, port = sim_addr
    cfg = work / "agent.toml"
    cfg.write_text(
        f'[site]\nid = "{SITE}"\nperiod_s = {period_s}\n\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\ntopic_prefix = "{PREFIX}"\n'
        "telemetry_s = 2\n\n"
        '[keys]\nagent_key = "agent.key"\noperator_pubkeys = ["operator.pub"]\n\n'
        '[storage]\npath = "agent.db"\nflush_s = 5\n\n'
        '[live]\npath = "live.json"\nevery_s = 2\n\n'
        "[contract]\nflow_limit_m3h = 2.5\nenforce = true\n\n"
        "[delivery]\ndebounce_s = 3\n" + devices_toml(host, port)
    )
    return cfg


class HeadEnd:
    """Subscribes to the site and checks every message with ``dh-agent verify``'s checker
    (signature, envelope, site, stream, sequence and chain)."""

    def __init__(self, port: int, pub_path: Path, plain: bool) -> None:
        pub = load_public(pub_path)
        self.checker = Checker(SITE, {thumbprint(pub): pub}, PREFIX)
        self.port = port
        self.plain = plain
        self.records: deque[dict[str, Any]] = deque(maxlen=6)
        self.events: deque[dict[str, Any]] = deque(maxlen=6)
        self.ok = 0
        self.bad = 0
        self.verified_intervals = 0
        self.lines: deque[str] = deque(maxlen=8)

    def note(self, line: str) -> None:
        self.lines.append(line)
        if self.plain:
            print(line, flush=True)

    def check(self, topic: str, payload: bytes, retained: bool = False) -> None:
        res = self.checker.check(topic, payload, retained)
        if not res["ok"]:
            self.bad += 1
            self.note(f"REJECTED {topic.split('/', 3)[-1]}: {res['reason']}")
            return
        self.ok += 1
        s, seq, body = res["stream"], res["seq"], self.checker.last_body
        why = "" if res["reason"] == "ok" else f" ({res['reason']})"
        if not isinstance(body, dict):
            return
        if s == "interval":
            self.verified_intervals += 1
            self.records.append(body)
            self.note(f"verified interval #{seq} {interval_line(body)}{why}")
        elif s == "event":
            self.events.append(body)
            self.note(f"verified event #{seq} {body.get('kind')} {body.get('device', '')}{why}")
        elif s == "status":
            self.note(f"verified status {body.get('state')} boot {body.get('boot')}")

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="demo-headend") as c:
                    await c.subscribe(f"{PREFIX}/{SITE}/#", qos=1)
                    async for m in c.messages:
                        if isinstance(m.payload, bytes):
                            self.check(str(m.topic), m.payload, bool(m.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)


def interval_line(b: dict[str, Any]) -> str:
    """One interval record in a line, by its role."""
    head = f"{b.get('device')} {b.get('start')}"
    if b.get("role") == HEAT_METER:
        return (
            f"{head} energy {b.get('energy_kwh')} kWh volume {b.get('volume_m3')} m3 "
            f"flow_avg {b.get('flow_avg_m3h')} m3/h flags {b.get('flags')}"
        )
    if b.get("role") == DP_SENSOR:
        return (
            f"{head} dp min/avg/max {b.get('dp_min_kpa')}/{b.get('dp_avg_kpa')}/"
            f"{b.get('dp_max_kpa')} kPa"
        )
    return (
        f"{head} valve position avg {b.get('position_avg_pct')} %, "
        f"limit min {b.get('limit_min_pct')} %"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def render(snap: dict[str, Any], head: HeadEnd, broker: str, t0: float) -> Any:
    """The terminal view: live values from the agent's snapshot (the same one telemetry
    and the technician's page show), records and events as verified from the broker."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    live = Table(title="current readings", expand=True)
    for col in ("device", "health", "value", "unit", "quality"):
        live.add_column(col)
    for name, d in snap["devices"].items():
        first = True
        for k, v in d["values"].items():
            if k in ("device_type", "serial", "operating_hours", "energy_unit", "volume_unit"):
                continue
            live.add_row(
                name if first else "",
                str(d["health"]) if first else "",
                f"{k} {_fmt(v['value'])}",
                v["unit"],
                str(v["quality"]),
            )
            first = False
    rec = Table(title="last interval records (verified from the broker)", expand=True)
    for col in ("device", "start", "energy kWh", "volume m3", "flow avg", "dp avg", "flags"):
        rec.add_column(col)
    for b in list(head.records)[-6:]:
        rec.add_row(
            str(b.get("device")),
            str(b.get("start", ""))[11:19],
            _fmt(b.get("energy_kwh")),
            _fmt(b.get("volume_m3")),
            _fmt(b.get("flow_avg_m3h")),
            _fmt(b.get("dp_avg_kpa")),
            ",".join(b.get("flags", [])),
        )
    ev = Table(title="events", expand=True)
    ev.add_column("time")
    ev.add_column("kind")
    ev.add_column("detail")
    for e in list(head.events)[-6:]:
        detail = {k: v for k, v in e.items() if k in ("device", "value", "threshold", "duration_s")}
        ev.add_row(str(e.get("time", ""))[11:19], str(e.get("kind")), json.dumps(detail))
    limiting = bool((snap.get("limiter") or {}).get("limiting"))
    head_line = (
        f"dh-agent demo  |  up {time.monotonic() - t0:.0f} s  |  broker {broker}  |  "
        f"period {snap['period_s']} s  |  limit {snap['contract']['flow_limit_m3h']} m3/h  |  "
        f"limiter {'LIMITING' if limiting else 'idle'}  |  "
        f"messages verified {head.ok}, rejected {head.bad}  |  Ctrl-C stops"
    )
    return Group(Panel(head_line), live, rec, ev)


async def demo_main(args: argparse.Namespace) -> int:
    work = args.dir or Path(tempfile.mkdtemp(prefix="dh-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("agent", "operator"):
        if not (work / f"{name}.key").exists():
            keygen(work, name)
    broker = Broker(work)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"dh-agent demo: work dir {work}, broker {broker.kind} on port {broker.port}", flush=True)
    page = None  # the technician's page (dh-agent serve), a process of its own
    try:
        async with SimServer(scenario=args.scenario, seed=1, tcp=("127.0.0.1", 0)) as sim:
            assert sim.tcp_address is not None
            cfg = load(write_config(work, sim.tcp_address, broker.port, args.period_s))
            page, url = start_page(work / "agent.toml")
            print(f"dh-agent demo: technician's page {url}", flush=True)
            agent = Agent(cfg)
            head = HeadEnd(broker.port, work / "agent.pub", args.plain)
            t0 = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                ht = tg.create_task(head.run())
                at = tg.create_task(agent.run())
                # the agent installs its own SIGINT/SIGTERM handlers: watch both
                if args.seconds is not None:
                    loop.call_later(args.seconds, stop.set)
                if args.plain:
                    while not stop.is_set() and not at.done() and not agent.stopping.is_set():
                        await asyncio.sleep(0.2)
                else:
                    from rich.live import Live

                    with Live(
                        render(agent.snapshot(), head, broker.kind, t0), refresh_per_second=2
                    ) as lv:
                        while not stop.is_set() and not at.done() and not agent.stopping.is_set():
                            await asyncio.sleep(0.5)
                            lv.update(render(agent.snapshot(), head, broker.kind, t0))
                agent.stopping.set()
                await at
                await asyncio.sleep(0.5)  # let the offline status come back
                ht.cancel()
            print(
                f"demo: {head.ok} messages verified ({head.verified_intervals} interval records), "
                f"{head.bad} rejected",
                flush=True,
            )
            return 0 if head.bad == 0 else 1
    finally:
        stop_page(page)
        await broker.stop()


def run_demo(args: argparse.Namespace) -> int:
    return asyncio.run(demo_main(args))
