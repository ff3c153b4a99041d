"""Import discipline (issue 16): what `dh-agent run` loads before it is needed costs RSS on
a small gateway and delays the first publish. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("sqlite_utils", "click", "pymodbus", "rich", "amqtt")


def loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.splitlines()[-1])}


def test_runner_imports_no_schema_modbus_or_demo_stack() -> None:
    mods = loaded_after("import agent.runner, agent.cli")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_fresh_store_is_created_without_sqlite_utils(tmp_path: Path) -> None:
    mods = loaded_after(
        f"from agent.store import Store\ns = Store({str(tmp_path / 'a.db')!r})\n"
        "assert s.schema_version >= 1\ns.close()"
    )
    assert "sqlite_utils" not in mods
    assert "sqlite3" in mods  # the probe really opened a store


def test_tcp_device_loads_pymodbus_when_created() -> None:
    mods = loaded_after(
        "import asyncio\nfrom drivers.modbus import TcpBus\n"
        "async def main() -> None:\n    assert TcpBus('127.0.0.1', 1502).client\n"
        "asyncio.run(main())"
    )
    assert "pymodbus" in mods


def test_clock_sync_check_spawns_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``synced()`` is asked every few seconds: it must not run ``ldconfig`` (as
    ``ctypes.util.find_library`` does) or any other child process."""
    from agent import clock

    def no_spawn(*a: object, **k: object) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_spawn)
    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    for _ in range(3):
        assert clock.kernel_synced() in (True, False)  # Linux: adjtimex answers
        assert clock.SyncClock("ntp", recheck_s=0.0).synced() in (True, False)
