"""A test rig of real processes: dh-sim over Modbus TCP, dh-agent run, their files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.keys import keygen
from simulator.layout import devices_toml
from tests.support.net import free_port as free_port  # re-exported

BIN = Path(sys.executable).parent


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    port: int
    truth: Path

    def truth_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.truth.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                out.append(json.loads(line))
        return out


@contextmanager
def simulator(tmp: Path, scenario: str = "steady", *extra: str) -> Iterator[Sim]:
    truth = tmp / "truth.jsonl"
    proc = subprocess.Popen(
        [
            str(BIN / "dh-sim"),
            "--tcp",
            "127.0.0.1:0",
            "--scenario",
            scenario,
            "--truth",
            str(truth),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(json.loads(proc.stdout.readline())["tcp"].rsplit(":", 1)[1])
        yield Sim(proc, port, truth)
    finally:
        stop(proc, timeout=10)


def write_config(
    tmp: Path,
    sim_port: int,
    mqtt_url: str,
    period_s: int = 5,
    contract: str = "enforce = false\n",
    extra: str = "",
    site: str = "test-site",
    poll_s: float = 1.0,
) -> Path:
    """agent.toml (+ agent and operator keys) in tmp."""
    if not (tmp / "agent.key").exists():
        keygen(tmp, "agent", False)
        keygen(tmp, "operator", False)
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[site]\nid = "{site}"\nperiod_s = {period_s}\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "dh/v1"\ntelemetry_s = 2\n\n'
        '[keys]\nagent_key = "agent.key"\noperator_pubkeys = ["operator.pub"]\n\n'
        '[storage]\npath = "agent.db"\nflush_s = 2\n\n'
        '[live]\npath = "live.json"\nevery_s = 1\n\n'
        f"[contract]\n{contract}\n{extra}" + devices_toml("127.0.0.1", sim_port, poll_s=poll_s)
    )
    return cfg


def start_agent(cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = dict(os.environ)
    e.setdefault("DH_AGENT_CLOCK", "trust")
    e.update(env or {})
    return subprocess.Popen(
        [str(BIN / "dh-agent"), "run", "--config", str(cfg)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=e,
    )


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Signal (SIGTERM), wait; SIGKILL after ``timeout``: the exit code (-999: killed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return -999


def wait_until(cond: Any, timeout: float, every: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


class ScaledClock:
    """A wall clock running ``speed`` times faster than real time from ``t0``, shared by
    the in-process simulator and agent (drivers.types.Clock): a simulated hour in minutes."""

    def __init__(self, speed: float, t0: float) -> None:
        self.speed = speed
        self.t0 = t0
        self.m0 = time.monotonic()

    def wall(self) -> float:
        return self.t0 + (time.monotonic() - self.m0) * self.speed

    def mono(self) -> float:
        return (time.monotonic() - self.m0) * self.speed

    def synced(self) -> bool:
        return True
