"""Starting a local Mosquitto: the one launcher behind the demo (`dh-agent demo`), the
benchmarks (bench/harness.py) and the test fixtures (tests/support/mosquitto.py).
Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian installs it in /usr/sbin), or None."""
    for c in CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("mosquitto")


def listening(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until something accepts on 127.0.0.1:``port`` (True), or ``proc`` has ended or
    the monotonic ``deadline`` has passed (False)."""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


def spawn_mosquitto(
    binary: str, conf: Path, log_path: Path, *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``binary -c conf`` with its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
