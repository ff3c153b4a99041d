"""Import discipline (issue 16): what `dh-agent run` loads before it is needed costs RSS on
a small gateway and delays the first publish. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("sqlite_utils", "click", "pymodbus", "rich", "amqtt", "cryptography")


# what `dh-agent run` imports only after the uplink's first connection attempt
AFTER_FIRST_CONNECT = (
    "agent.commands",
    "agent.rotation",
    "agent.limiter",
    "agent.limiter_store",
    "agent.limiter_override",
    "agent.monitors",
    "agent.plausibility",
    "agent.stamping",
    "agent.snapshot",
    "agent.advice",
    "agent.aggregator",
    "agent.meters",
    "drivers.device",
    "drivers.modbus",
    "drivers.mbus_device",
    "drivers.mbus_map",
    "importlib.resources",
    "csv",
)


def modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def loaded_after(code: str) -> set[str]:
    return {m.split(".")[0] for m in modules_after(code)}


def test_no_dataclass_code_is_compiled_for_ours_before_the_first_connect(tmp_path: Path) -> None:
    """Each ``@dataclass`` compiles its methods when its module is imported (about 1 ms a
    frozen class): the types loaded before the first publish use ``drivers.dataclass_lite``,
    which compiles nothing. aiomqtt's own dataclasses are not ours to change."""
    from tests.support.rig import write_config

    cfg = write_config(tmp_path, 1502, "mqtt://127.0.0.1:1883")
    probe = (
        "import dataclasses, json\n"
        "seen = []\n"
        "real = dataclasses._create_fn\n"
        "def spy(name, *a, **k):\n"
        "    seen.append(k['globals']['__name__'])\n"
        "    return real(name, *a, **k)\n"
        "dataclasses._create_fn = spy\n"
        "import agent.runner, agent.cli, agent.store_early\n"
        f"from agent.config import load\ncfg = load({str(cfg)!r})\n"
        "print(json.dumps(sorted(set(seen))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    compiled_for = set(json.loads(out.splitlines()[-1]))
    assert "aiomqtt.client" in compiled_for  # the spy sees what is compiled
    assert not {m for m in compiled_for if m.split(".")[0] in ("agent", "drivers")}


def test_runner_imports_no_schema_modbus_or_demo_stack() -> None:
    mods = loaded_after("import agent.runner, agent.cli")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_first_publish_needs_no_pipeline_modules(tmp_path: Path) -> None:
    """The runner and a Modbus-only config: none of the modules the agent builds after its
    first connection attempt (limiter, monitors, remote commands, M-Bus ...)."""
    from tests.support.rig import write_config

    cfg = write_config(tmp_path, 1502, "mqtt://127.0.0.1:1883")
    mods = modules_after(
        "import agent.runner, agent.cli\nfrom agent.config import load\n"
        f"cfg = load({str(cfg)!r})\nassert cfg.devices"
    )
    early = mods & set(AFTER_FIRST_CONNECT)
    assert not early, early
    assert "agent.runner" in mods


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


def test_agent_signs_and_verifies_without_cryptography(tmp_path: Path) -> None:
    """With a libcrypto that does Ed25519 (``agent.ed25519``), the running agent's keys,
    signatures, operator-key checks and key rotation never import ``cryptography``
    (about 8 MB of RSS)."""
    from agent.ed25519 import native_lib
    from agent.keys import keygen

    if native_lib() is None:
        pytest.skip("the loaded libcrypto has no Ed25519: the fallback is cryptography")
    keygen(tmp_path)
    mods = loaded_after(
        "import asyncio\nfrom pathlib import Path\n"
        "from agent.commands import load_operator_keys\nfrom agent.jws import Signer, verify\n"
        "from agent.keys import load_signing_key\nfrom agent.rotation import write_pending\n"
        f"d = Path({str(tmp_path)!r})\n"
        "s = Signer(load_signing_key(d / 'agent.key'))\n"
        "keys = load_operator_keys((d / 'agent.pub',))\n"
        "assert verify(s.sign({'a': 1}), keys) == {'a': 1}\n"
        "new = Signer(write_pending(d / 'agent-rotated.key.new'))\n"
        "assert new.kid != s.kid"
    )
    assert "agent" in mods  # the probe ran
    assert "cryptography" not in mods


@pytest.mark.integration
def test_running_agent_has_no_cryptography_mapped() -> None:
    """``dh-agent run`` in its steady state (devices polled, telemetry published): no
    file of the cryptography package is mapped into the process."""
    from agent.ed25519 import native_lib
    from bench.harness import Rig

    if native_lib() is None:
        pytest.skip("the loaded libcrypto has no Ed25519: the fallback is cryptography")
    with Rig(period_s=60) as rig:
        agent = rig.start_agent()
        log = rig.work / "agent.log"
        deadline = time.monotonic() + 30
        while "dh-agent started" not in log.read_text() and time.monotonic() < deadline:
            assert agent.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "dh-agent started" in log.read_text(), log.read_text()
        time.sleep(2.0)  # a few polls and signed messages
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
        assert agent.poll() is None
        assert "libcrypto" in maps  # the probe is right: the system library is there
        assert "/cryptography/" not in maps


def test_run_starts_without_cyclic_gc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`dh-agent run` imports and opens without the cyclic collector (some fifty
    collections over the start-up imports, about 5 ms of the first publish); every other
    command gets it back before it runs, and `main` leaves it enabled."""
    import gc

    from agent import cli, cli_commands, runner
    from agent.store_early import EarlyStore
    from tests.support.rig import write_config

    cfg = write_config(tmp_path, 1502, "mqtt://127.0.0.1:1883")
    seen: dict[str, bool] = {}

    def fake_run(c: object, early: EarlyStore) -> int:
        seen["run"] = gc.isenabled()
        early.executor.submit(lambda: early.opened.result().close()).result()
        return 0

    def fake_check(args: object) -> int:
        seen["check-config"] = gc.isenabled()
        return 0

    monkeypatch.setattr(runner, "run_agent", fake_run)
    monkeypatch.setitem(cli_commands.HANDLERS, "check-config", fake_check)
    assert cli.main(["run", "--config", str(cfg)]) == 0
    assert gc.isenabled()
    assert cli.main(["check-config", "--config", str(cfg)]) == 0
    assert seen == {"run": False, "check-config": True}
    assert gc.isenabled()


def test_agent_enables_gc_once_started(tmp_path: Path) -> None:
    """The agent turns the collector back on once started (devices opened), even when the
    broker is not there: a long-running daemon must not run without it."""
    import asyncio
    import gc

    from agent.config import load
    from agent.runner import Agent
    from tests.support.rig import write_config

    cfg = load(write_config(tmp_path, 1, "mqtt://127.0.0.1:1"))  # nothing listens on 1

    async def main() -> bool:
        agent = Agent(cfg)
        task = asyncio.create_task(agent.run())
        deadline = time.monotonic() + 15
        while not gc.isenabled() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        enabled, started = gc.isenabled(), bool(agent.channels)
        agent.stopping.set()
        await asyncio.wait_for(task, 30)
        return enabled and started

    gc.disable()
    try:
        assert asyncio.run(main())
    finally:
        gc.enable()
