"""Shared by the page tests and bench/web.py: a site's config (``config_text``), a site
folder with a store holding known interval records and events and a live snapshot
(``make_site``), `dh-agent serve` as a subprocess (``serve``), and raw HTTP."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import snapshot
from agent.jws import Signer, envelope
from agent.keys import keygen
from agent.store import Store
from agent.timefmt import rfc3339
from drivers.types import Quality, Reading, Value
from simulator.layout import devices_toml
from tests.support.rig import BIN, free_port, stop, wait_until

SITE = "web-site"
HOUR = 3600
NO_DATA_K = 10  # hours back: the record flagged no_data
INTERP_K = 20  # the record flagged interpolated

CONFIG = """
[site]
id = "{site}"
period_s = 3600

[mqtt]
url = "mqtt://127.0.0.1:1883"

[keys]
agent_key = "agent.key"

[storage]
path = "{storage}"

[live]
path = "live.json"
every_s = 5

[contract]
flow_limit_m3h = 2.5
enforce = true

{web}"""


def config_text(site: str = SITE, web: str = "", storage: str = "agent.db") -> str:
    """agent.toml of a site with the simulator's three devices; ``web``: extra sections."""
    return CONFIG.format(site=site, web=web, storage=storage) + devices_toml("127.0.0.1", 5020)


def heat_record(start: float, k: int) -> dict[str, Any]:
    flags = ["no_data"] if k == NO_DATA_K else ["interpolated"] if k == INTERP_K else []
    temps = k != NO_DATA_K
    return {
        "device": "hm1", "role": "heat_meter", "period_s": HOUR,
        "start": rfc3339(start), "end": rfc3339(start + HOUR),
        "energy_kwh": 60.0 + k, "volume_m3": 2.0 + k / 100,
        "flow_avg_m3h": 2.0 + k / 100, "flow_max_m3h": 2.6,
        "power_avg_kw": 60.0 + k, "power_max_kw": 80.0,
        "supply_avg_c": 80.0 if temps else None, "return_avg_c": 40.0 if temps else None,
        "flow_limit_m3h": 2.5, "flags": flags,
    }  # fmt: skip


def dp_record(start: float, k: int) -> dict[str, Any]:
    return {
        "device": "dp1", "role": "dp_sensor", "period_s": HOUR,
        "start": rfc3339(start), "end": rfc3339(start + HOUR),
        "dp_min_kpa": 70.0 + k % 5, "dp_avg_kpa": 90.0, "dp_max_kpa": 100.0, "flags": [],
    }  # fmt: skip


@dataclass
class SiteData:
    folder: Path
    config: Path
    now_hour: float
    heat_in_window: int  # heat-meter records whose middle lies in the last 48 h
    events: list[dict[str, Any]]


def make_site(folder: Path, web: str = "", site: str = SITE) -> SiteData:
    """Config, store (records for the last 60 hours, events), live snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    keygen(folder, "agent", False)
    cfg = folder / "agent.toml"
    cfg.write_text(config_text(site, web))
    signer = Signer(Ed25519PrivateKey.generate())
    now = time.time()
    hour = now // HOUR * HOUR
    ks = range(1, 61)

    def sign(stream: str) -> Any:
        return lambda body, seq, prev: signer.sign(envelope(site, stream, seq, prev, now, body))

    events: list[dict[str, Any]] = [
        {"kind": "dp_low", "device": "dp1", "value": 55.0, "threshold": 60.0,
         "time": rfc3339(now - 3600)},
        {"kind": "flow_limit_enforced", "device": "hm1", "value": 2.7,
         "time": rfc3339(now - 600)},
        {"kind": "old_event", "time": rfc3339(now - 30 * 86400)},
    ]  # fmt: skip
    with Store(folder / "agent.db") as store:
        store.next_boot()
        for k in sorted(ks, reverse=True):
            start = hour - k * HOUR
            store.commit_intervals("hm1", "{}", [heat_record(start, k)], "t", sign("interval"))
            store.commit_intervals("dp1", "{}", [dp_record(start, k)], "t", sign("interval"))
        for ev in sorted(events, key=lambda e: e["time"]):
            store.add_event(ev, "t/event", sign("event"))
    in_window = sum(1 for k in ks if hour - k * HOUR + HOUR / 2 >= now - 48 * HOUR)
    write_snapshot(folder, site, now)
    return SiteData(folder, cfg, hour, in_window, events)


def reading(
    name: str, role: str, ts: float, vals: dict[str, tuple[float, str, Quality]]
) -> Reading:
    return Reading(name, role, ts, 0.0, True, True,
                   {k: Value(v, u, q) for k, (v, u, q) in vals.items()})  # fmt: skip


def write_snapshot(folder: Path, site: str, now: float) -> dict[str, Any]:
    good, imp = Quality.GOOD, Quality.IMPLAUSIBLE
    devs = [
        snapshot.DeviceView("hm1", "heat_meter", "tcp", "sim-heat-meter", "ok",
                            reading("hm1", "heat_meter", now - 1,
                                    {"flow_m3h": (2.345, "m3/h", good),
                                     "supply_c": (81.25, "C", good),
                                     "power_kw": (999.5, "kW", imp)}),
                            {"polls": 123, "polls_failed": 4}, {"serial": "HM-0042"}),
        snapshot.DeviceView("dp1", "dp_sensor", "tcp", "sim-dp-sensor", "degraded",
                            reading("dp1", "dp_sensor", now - 2,
                                    {"dp_kpa": (87.5, "kPa", good)}), {"polls": 120}),
        snapshot.DeviceView("act1", "actuator", "tcp", "sim-actuator", "offline"),
    ]  # fmt: skip
    lim = {"active": True, "enforce": True, "limiting": True, "last_write_pct": 42.5,
           "period_start": now // HOUR * HOUR, "period_end": now // HOUR * HOUR + HOUR,
           "period_volume_m3": 1.25, "budget_m3": 2.5, "allowed_flow_m3h": 2.2}  # fmt: skip
    snap = snapshot.build_snapshot(
        site=site, wall=now, mono=1.0, clock_synced=True, boot=7, pid=1, config_version=3,
        period_s=HOUR, contract={"flow_limit_m3h": 2.5, "power_limit_kw": None, "enforce": True},
        delivery={"supply_min_c": 65.0, "return_max_c": 65.0, "dp_min_kpa": 60.0},
        devices=devs, limiter=lim, alarms=[("dp1", "dp_low", now - 3600)],
        uplink={"connected": True, "backlog": {"interval": 5, "event": 2}, "last_publish": now},
        last_records={},
    )  # fmt: skip
    snapshot.write_atomic(folder / "live.json", snapshot.dumps(snap))
    return snap


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


@contextlib.contextmanager
def serve(config: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    log = config.parent / f"serve-{port}.log"
    proc = subprocess.Popen(
        [str(BIN / "dh-agent"), "serve", "--config", str(config), "--listen",
         f"127.0.0.1:{port}", *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        assert wait_until(lambda: can_connect(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        yield Server(proc, port, log)
    finally:
        stop(proc, timeout=10)


def can_connect(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def raw(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send bytes, read the whole answer (the server closes after each answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else -1


def get(port: int, path: str, headers: str = "") -> tuple[int, dict[str, str], str]:
    ans = raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    head, _, body = ans.partition(b"\r\n\r\n")
    hdrs = {}
    for ln in head.decode().split("\r\n")[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status_of(ans), hdrs, body.decode("utf-8", "replace")
