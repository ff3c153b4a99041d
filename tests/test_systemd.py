"""systemd/dh-agent.service: `systemd-analyze verify`, the `systemd-analyze security`
exposure score (<= 2.0), the directives the agent relies on, and that CPython + the agent's
native dependencies run under MemoryDenyWriteExecute semantics."""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.support.rig import simulator, write_config

pytestmark = pytest.mark.integration  # systemd-analyze, strace, the agent under the unit

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "dh-agent.service"
BIN = Path(sys.executable).parent
INSTALLED_BIN = "/opt/dh-agent/venv/bin/dh-agent"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
STRACE = shutil.which("strace")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


# --- pure helpers ----------------------------------------------------------------------


def parse_exposure(report: str) -> float:
    """The score of `systemd-analyze security` output ("Overall exposure level for
    X.service: 1.5 OK")."""
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", report)
    if m is None:
        raise ValueError("no 'Overall exposure level' line")
    return float(m.group(1))


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (a key may repeat); comments and blanks ignored."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not a key=value line: {raw!r}")
        out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    """A systemd time span of the simple forms used here: 30, 30s, 2min, 1min 30s."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    parts = value.split()
    if not parts:
        raise ValueError("empty time span")
    for part in parts:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", part)
        if m is None or m.group(2) not in units:
            raise ValueError(f"unsupported time span {value!r}")
        total += float(m.group(1)) * units[m.group(2)]
    return total


def test_parse_exposure() -> None:
    report = "✓ Foo=   x\n\n→ Overall exposure level for dh-agent.service: 1.5 OK 🙂\n"
    assert parse_exposure(report) == 1.5
    assert parse_exposure("Overall exposure level for a.service: 9.6 UNSAFE 😨") == 9.6
    assert parse_exposure("Overall exposure level for a.service: 2 OK") == 2.0
    with pytest.raises(ValueError):
        parse_exposure("Failed to load unit")


def test_parse_unit_and_seconds() -> None:
    u = parse_unit("# c\n[Service]\nDeviceAllow=a rw\nDeviceAllow=b rw\nType = notify\n")
    assert u == {"Service": {"DeviceAllow": ["a rw", "b rw"], "Type": ["notify"]}}
    with pytest.raises(ValueError):
        parse_unit("[Service]\nnonsense\n")
    assert seconds("30s") == 30.0
    assert seconds("1min 30s") == 90.0
    assert seconds("15") == 15.0
    with pytest.raises(ValueError):
        seconds("soon")


# --- the unit's content ------------------------------------------------------------------


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(section: str, key: str) -> str:
    values = unit()[section].get(key, [])
    assert len(values) == 1, f"{section}.{key}: {values}"
    return values[0]


def test_service_lifecycle_directives() -> None:
    assert one("Service", "Type") == "notify"
    assert one("Service", "Restart") == "on-failure"
    cfg = "--config /etc/dh-agent/agent.toml"
    assert one("Service", "ExecStartPre") == f"{INSTALLED_BIN} check-config {cfg}"
    assert one("Service", "ExecStart") == f"{INSTALLED_BIN} run {cfg}"
    # the agent pings every WatchdogSec/2 (runner.watchdog_loop): leave a real margin
    assert 10 <= seconds(one("Service", "WatchdogSec")) <= 120
    # SIGTERM: in-flight writes + offline status within ~10 s (uplink shutdown bound)
    assert seconds(one("Service", "TimeoutStopSec")) >= 20
    assert one("Service", "StandardOutput") == "journal"
    assert one("Service", "StandardError") == "journal"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_user_dirs_and_serial_access() -> None:
    s = unit()["Service"]
    assert s["User"] == ["dh-agent"]
    assert "dialout" in " ".join(s["SupplementaryGroups"]).split()
    assert s["StateDirectory"] == ["dh-agent"]
    assert s["ConfigurationDirectory"] == ["dh-agent"]
    assert "DynamicUser" not in s  # a fixed user: it owns agent.key in /etc/dh-agent
    # PrivateDevices=yes would mount a /dev without ttyUSB*/ttyACM*/ttyS*/ttyAMA*
    assert s.get("PrivateDevices", ["no"]) == ["no"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0]: v.split()[1] for v in s["DeviceAllow"]}
    for group in ("char-ttyS", "char-ttyUSB", "char-ttyAMA", "char-ttyACM"):
        assert allowed.get(group) == "rw", group
    # network: Modbus TCP and MQTT over IPv4/IPv6, sd_notify and journald over AF_UNIX
    families = set(" ".join(s["RestrictAddressFamilies"]).split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s
    assert s["MemoryDenyWriteExecute"] == ["yes"]


# --- systemd-analyze ----------------------------------------------------------------------


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_verify_clean_with_existing_binary(tmp_path: Path) -> None:
    """verify also checks that ExecStart's binary exists: verify a copy whose
    /opt/dh-agent path points at this checkout's dh-agent, and demand no output at all."""
    real = BIN / "dh-agent"
    assert real.exists()
    copy = tmp_path / "dh-agent.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(real)))
    r = run_analyze("verify", str(copy))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


@needs_analyze
def test_verify_original_only_misses_the_installed_binary() -> None:
    r = run_analyze("verify", str(UNIT))
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    if Path(INSTALLED_BIN).exists():  # an installed gateway: must be clean
        assert r.returncode == 0 and lines == []
        return
    expected = (
        f"dh-agent.service: Command {INSTALLED_BIN} is not executable: No such file or directory"
    )
    assert set(lines) == {expected}, lines


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Control: the same check fails on a typo, so the clean result above means something."""
    copy = tmp_path / "dh-agent.service"
    copy.write_text(
        UNIT.read_text()
        .replace(INSTALLED_BIN, str(BIN / "dh-agent"))
        .replace("Restart=on-failure", "Restart=on-fialure")
    )
    r = run_analyze("verify", str(copy))
    assert "on-fialure" in r.stdout + r.stderr


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    r = run_analyze("security", "--offline=true", str(UNIT))
    score = parse_exposure(r.stdout + r.stderr)
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE, r.stdout


@needs_analyze
def test_security_without_sandbox_scores_worse(tmp_path: Path) -> None:
    """Control: the same unit without its sandbox section is rated far above 2.0."""
    text = UNIT.read_text()
    head, _, tail = text.partition("# --- sandbox")
    assert tail, "unit lost its '# --- sandbox' marker"
    copy = tmp_path / "dh-agent.service"
    copy.write_text(head + "\n[Install]\nWantedBy=multi-user.target\n")
    r = run_analyze("security", "--offline=true", str(copy))
    assert parse_exposure(r.stdout + r.stderr) > 5.0


# --- MemoryDenyWriteExecute: CPython and the agent's native libraries --------------------

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Runs under PR_SET_MDWE (the kernel's MemoryDenyWriteExecute, same rule as systemd's
# seccomp filter: no W+X mapping, no gaining X). Exercises what `dh-agent run` loads.
MDWE_PROBE = textwrap.dedent(
    f"""
    import asyncio, ctypes, mmap, sqlite3, ssl, sys
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0, ctypes.get_errno()
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("W+X allowed")
        sys.exit(3)
    except OSError:
        pass
    import agent.runner, agent.uplink, agent.cli, drivers.device, simulator.cli  # noqa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    k = Ed25519PrivateKey.generate()
    k.public_key().verify(k.sign(b"x"), b"x")
    db = sqlite3.connect(":memory:")
    db.execute("create table t (a)")
    ssl.create_default_context()
    async def main():
        await asyncio.sleep(0)
        return 42
    assert asyncio.run(main()) == 42
    print("ok")
    """
)


def mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)  # Linux >= 6.3
    return bool(r >= 0)


@pytest.mark.skipif(not mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_cpython_and_agent_run_under_memory_deny_write_execute() -> None:
    r = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "ok"


# --- the real agent as the unit runs it: sd_notify protocol and system calls ---------------


def allowed_syscalls(filters: list[str], expand: dict[str, set[str]]) -> set[str]:
    """The allow-list that SystemCallFilter= lines build, in order: a plain line adds, a
    '~' line removes (systemd's semantics once the first line is an allow-list)."""
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names: set[str] = set()
        for item in line.lstrip("~").split():
            names |= expand[item] if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def test_allowed_syscalls_order() -> None:
    groups = {"@a": {"x", "y", "z"}, "@b": {"y"}}
    assert allowed_syscalls(["@a", "~@b"], groups) == {"x", "z"}
    assert allowed_syscalls(["@a", "~@b", "y w"], groups) == {"w", "x", "y", "z"}


def expand_group(group: str, cache: dict[str, set[str]]) -> set[str]:
    """A syscall group by `systemd-analyze syscall-filter`, nested groups resolved."""
    if group not in cache:
        out = run_analyze("syscall-filter", group).stdout.splitlines()[1:]
        names: set[str] = set()
        for line in out:
            item = line.strip()
            if item and not item.startswith("#"):
                names |= expand_group(item, cache) if item.startswith("@") else {item}
        cache[group] = names
    return cache[group]


def strace_syscalls(summary: str) -> set[str]:
    """Names from an `strace -c` table."""
    names = set()
    for line in summary.splitlines():
        cols = line.split()
        if len(cols) >= 5 and re.fullmatch(r"[\d.]+", cols[0]) and cols[-1] != "total":
            names.add(cols[-1])
    return names


def recv_notify(sock: socket.socket, timeout: float) -> tuple[str, int] | None:
    """One sd_notify datagram and its sender's pid (SCM_CREDENTIALS), as systemd sees it."""
    sock.settimeout(timeout)
    try:
        msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        return None
    pid = -1
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    return msg.decode(), pid


@dataclass
class AgentRun:
    """One `dh-agent run` as the unit starts it, traced: what systemd would have seen."""

    ready: tuple[str, int] | None
    main_pid: int
    watchdog_gaps: list[float]
    stopping: tuple[str, int] | None
    exit_code: int | None  # None: still running GRACE_S after SIGTERM, then SIGKILLed
    stop_s: float
    syscalls: set[str]


WATCHDOG_S = 2.0
GRACE_S = 12.0  # SIGTERM -> exit budget in the test (the unit allows TimeoutStopSec=30s)


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRun]:
    if STRACE is None:
        pytest.skip("strace not installed")
    tmp = tmp_path_factory.mktemp("unit-run")
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp)
    broker.start()
    notify = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    summary = tmp / "strace.txt"
    try:
        with simulator(tmp) as sim:
            cfg = write_config(tmp, sim.port, broker.url)
            env = {
                **os.environ,
                "NOTIFY_SOCKET": str(notify),
                "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
                "DH_AGENT_CLOCK": "auto",  # the unit sets nothing: the NTP-status read runs
            }
            cmd = [STRACE, "-f", "-qq", "-c", "-o", str(summary)]
            cmd += [str(BIN / "dh-agent"), "run", "--config", str(cfg)]
            log = (tmp / "agent.log").open("wb")
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
            main_pid, exit_code = -1, None
            try:
                ready = recv_notify(sock, 30)
                assert ready is not None, "no READY=1 within 30 s"
                main_pid = ready[1]
                t0 = time.monotonic()
                pings: list[float] = []
                while len(pings) < 3:
                    m = recv_notify(sock, 5)
                    assert m == ("WATCHDOG=1", main_pid), m
                    pings.append(time.monotonic() - t0)
                t_stop = time.monotonic()
                os.kill(main_pid, signal.SIGTERM)
                stopping = recv_notify(sock, 10)
                while stopping is not None and stopping[0] == "WATCHDOG=1":
                    stopping = recv_notify(sock, 10)
                try:
                    exit_code = proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    os.kill(main_pid, signal.SIGKILL)  # what systemd does at TimeoutStopSec
                    proc.wait(10)
                stop_s = time.monotonic() - t_stop
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
                log.close()
    finally:
        sock.close()
        broker.stop()
    yield AgentRun(
        ready=ready,
        main_pid=main_pid,
        watchdog_gaps=[b - a for a, b in itertools.pairwise(pings)],
        stopping=stopping,
        exit_code=exit_code,
        stop_s=stop_s,
        syscalls=strace_syscalls(summary.read_text()),
    )


def test_agent_notifies_ready_watchdog_and_stopping(agent_run: AgentRun) -> None:
    """Type=notify + NotifyAccess=main: READY=1 from the main pid, WATCHDOG=1 every
    WatchdogSec/2, STOPPING=1 on SIGTERM."""
    assert agent_run.ready == ("READY=1", agent_run.main_pid)
    assert agent_run.main_pid > 0
    assert all(WATCHDOG_S / 4 < g < WATCHDOG_S for g in agent_run.watchdog_gaps), (
        agent_run.watchdog_gaps
    )
    assert agent_run.stopping == ("STOPPING=1", agent_run.main_pid)


@needs_analyze
def test_agent_syscalls_stay_inside_the_unit_filter(agent_run: AgentRun) -> None:
    used = agent_run.syscalls
    assert "clock_adjtime" in used or "adjtimex" in used  # the NTP-status read happened
    filters = unit()["Service"]["SystemCallFilter"]
    cache: dict[str, set[str]] = {}
    groups = {
        item: expand_group(item, cache)
        for line in filters
        for item in line.lstrip("~").split()
        if item.startswith("@")
    }
    outside = used - allowed_syscalls(filters, groups)
    if os.geteuid() == 0:
        # SQLite hands new -wal/-journal files to the database's owner when run as root;
        # under the unit the agent runs as dh-agent and never calls it
        outside.discard("fchown")
    assert outside == set(), f"system calls the unit would refuse: {sorted(outside)}"


def test_agent_exits_0_soon_after_sigterm(agent_run: AgentRun) -> None:
    print(f"SIGTERM to exit: {agent_run.stop_s:.2f} s")
    assert agent_run.exit_code == 0, f"no exit within {GRACE_S} s of SIGTERM"
    assert agent_run.stop_s < seconds(one("Service", "TimeoutStopSec")) / 2


# --- the technician's page: dh-agent-web.socket + dh-agent-web.service ----------------------

WEB_UNIT = REPO / "systemd" / "dh-agent-web.service"
WEB_SOCKET = REPO / "systemd" / "dh-agent-web.socket"


def test_web_units_content() -> None:
    svc, sock = parse_unit(WEB_UNIT.read_text()), parse_unit(WEB_SOCKET.read_text())
    s = svc["Service"]
    assert s["ExecStart"] == [f"{INSTALLED_BIN} serve --config /etc/dh-agent/agent.toml"]
    assert s["User"] == ["dh-agent"] and "StateDirectory" not in s  # reads, never owns
    assert "ReadWritePaths" not in s and s["ProtectSystem"] == ["strict"]
    # the socket comes from systemd: no network of its own, no serial ports
    assert s["PrivateNetwork"] == ["yes"] and s["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert s["PrivateDevices"] == ["yes"] and s["MemoryDenyWriteExecute"] == ["yes"]
    assert svc["Unit"]["Requires"] == ["dh-agent-web.socket"]
    assert sock["Socket"]["ListenStream"] == ["127.0.0.1:8080"]  # local unless configured
    assert sock["Socket"]["Accept"] == ["no"]
    assert sock["Install"]["WantedBy"] == ["sockets.target"]


@needs_analyze
def test_web_units_verify_clean(tmp_path: Path) -> None:
    for unit_file in (WEB_UNIT, WEB_SOCKET):
        (tmp_path / unit_file.name).write_text(
            unit_file.read_text().replace(INSTALLED_BIN, str(BIN / "dh-agent"))
        )
    r = run_analyze("verify", str(tmp_path / WEB_UNIT.name), str(tmp_path / WEB_SOCKET.name))
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


@needs_analyze
def test_web_security_exposure_at_most_2() -> None:
    r = run_analyze("security", "--offline=true", str(WEB_UNIT))
    score = parse_exposure(r.stdout + r.stderr)
    print(f"dh-agent-web.service exposure: {score}")
    assert score <= MAX_EXPOSURE, r.stdout


# --- systemd/dh-agent-customer.service ------------------------------------------------

CUSTOMER_UNIT = REPO / "systemd" / "dh-agent-customer.service"


def test_customer_unit_runs_the_customer_command_without_keys_or_store() -> None:
    u = parse_unit(CUSTOMER_UNIT.read_text())["Service"]
    assert u["ExecStart"] == [f"{INSTALLED_BIN} customer --config /etc/dh-agent/agent.toml"]
    assert u["Type"] == ["notify"]
    hidden = u["InaccessiblePaths"][0].split()
    assert "-/var/lib/dh-agent" in hidden and "-/etc/dh-agent/agent.key" in hidden
    assert u["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert u["PrivateDevices"] == ["yes"] and u["NoNewPrivileges"] == ["yes"]


@needs_analyze
def test_customer_unit_security_exposure_at_most_2() -> None:
    r = run_analyze("security", "--offline=true", str(CUSTOMER_UNIT))
    score = parse_exposure(r.stdout + r.stderr)
    print(f"customer unit exposure: {score}")
    assert score <= MAX_EXPOSURE
