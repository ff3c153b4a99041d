"""Import discipline (issue 16): what `dh-agent run` loads before it is needed costs RSS on
a small gateway and delays the first publish. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
