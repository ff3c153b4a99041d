"""Shared by the agent-level benchmarks: start dh-sim, a Mosquitto and `dh-agent run`
as real processes on loopback, in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from agent.broker import free_port as free_port  # re-exported
from agent.broker import listening, mosquitto_binary, spawn_mosquitto
from simulator.layout import devices_toml

BIN = Path(sys.executable).parent


def wait_port(port: int, timeout: float = 10.0) -> None:
    if not listening(port, time.monotonic() + timeout):
        raise RuntimeError(f"nothing listens on port {port}")


def mosquitto_exe() -> str:
    exe = mosquitto_binary()
    if exe is None:
        raise SystemExit("mosquitto is not installed (bash tests/bootstrap.sh installs it)")
    return exe


class Broker:
    def __init__(self, work: Path, port: int | None = None, persistence: bool = False) -> None:
        self.port = port or free_port()
        self.conf = work / "mosquitto.conf"
        # persistence: sessions (and their queued messages) survive a restart
        keep = f"persistence true\npersistence_location {work}/\n" if persistence else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n" + keep
        )
        self.log_path = work / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn_mosquitto(mosquitto_exe(), self.conf, self.log_path)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Rig:
    """dh-sim + broker + a config for 3 devices; the agent is started by the bench."""

    def __init__(
        self,
        period_s: int = 3600,
        scenario: str = "steady",
        poll_s: float = 1.0,
        flush_s: float | None = None,
        persistence: bool = False,
    ) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="dh-bench-"))
        self.period_s, self.scenario, self.poll_s, self.flush_s = (
            period_s,
            scenario,
            poll_s,
            flush_s,
        )
        self.broker = Broker(self.work, persistence=persistence)
        self.sim: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.bare: subprocess.Popen[bytes] | None = None
        self.config = self.work / "agent.toml"
        # the live snapshot in RAM, as on a gateway (/run/dh-agent, a tmpfs): it is
        # rewritten every few seconds and must not count as SD-card writes
        shm = Path("/dev/shm")
        self.run_dir = Path(
            tempfile.mkdtemp(prefix="dh-bench-run-", dir=shm if shm.is_dir() else None)
        )

    def __enter__(self) -> Rig:
        self.broker.start()
        self.sim = subprocess.Popen(
            [
                str(BIN / "dh-sim"),
                "--tcp",
                "127.0.0.1:0",
                "--scenario",
                self.scenario,
                "--seed",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.sim.stdout is not None
        self.sim_addr: str = json.loads(self.sim.stdout.readline())["tcp"]
        host, port = self.sim_addr.rsplit(":", 1)
        for name in ("agent", "operator"):
            subprocess.run(
                [str(BIN / "dh-agent"), "keygen", "--out", str(self.work), "--name", name],
                check=True,
                capture_output=True,
            )
        flush = f"flush_s = {self.flush_s}\n" if self.flush_s else ""
        self.config.write_text(
            f'[site]\nid = "bench-1"\nperiod_s = {self.period_s}\n\n'
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{self.broker.port}"\n\n'
            '[keys]\nagent_key = "agent.key"\noperator_pubkeys = ["operator.pub"]\n\n'
            f'[storage]\npath = "agent.db"\n{flush}\n'
            f'[live]\npath = "{self.run_dir / "live.json"}"\n\n'
            "[contract]\nflow_limit_m3h = 2.5\nenforce = true\n"
            + devices_toml(host, int(port), poll_s=self.poll_s)
        )
        return self

    def start_agent(self, log_name: str = "agent.log") -> subprocess.Popen[bytes]:
        self.agent = subprocess.Popen(
            [str(BIN / "dh-agent"), "run", "--config", str(self.config)],
            stdout=(self.work / log_name).open("ab"),
            stderr=subprocess.STDOUT,
        )
        return self.agent

    def start_bare(self) -> subprocess.Popen[bytes]:
        """The bare pymodbus + paho baseline (bench/bare_agent.py) on the same simulator
        and broker, publishing its telemetry beside the agent's."""
        self.bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_agent",
                self.sim_addr,
                str(self.broker.port),
                "dh/v1/bench-1/bare-telemetry",
            ],
            stdout=(self.work / "bare.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        return self.bare

    def stop_agent(self) -> int | None:
        if self.agent is None or self.agent.poll() is not None:
            return self.agent.returncode if self.agent else None
        self.agent.send_signal(signal.SIGTERM)
        try:
            return self.agent.wait(20)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            return None

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_agent()
        if self.bare is not None and self.bare.poll() is None:
            self.bare.terminate()
            self.bare.wait(10)
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(10)
        self.broker.stop()
        if not os.environ.get("DH_BENCH_KEEP"):
            shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def proc_io_write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak
