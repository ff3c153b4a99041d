"""The architecture's import rules, checked on the sources (docs/architecture.md):

- the pure modules (decisions, codecs and models: ``DECISIONS``) import no broker, no
  database, no event loop, no processes or sockets, and none of the agent's I/O modules;
- ``drivers`` and ``simulator`` never import ``agent`` (except ``agent.protocol``, a
  leaf of names, and the water properties), so the device layer stays usable on its own.

Imports under ``if TYPE_CHECKING:`` are ignored (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the pure modules: decisions, codecs and models over plain data (docs/architecture.md)
DECISIONS = (
    *(f"agent/{m}.py" for m in (
        "advice", "aggregator", "counter_chain", "customer_map", "events", "finite",
        "limiter", "limiter_events", "limiter_law", "limiter_override", "limiter_state",
        "meters", "monitors", "plausibility", "plausibility_water", "protocol", "stamping",
        "store_bulk", "store_codec", "store_fields", "store_wire", "outbox", "uplink_window",
        "timefmt", "config_schema", "web/charts", "web/pages",
        "web/svg")),
    *(f"drivers/{m}.py" for m in (
        "dataclass_lite", "health", "mbus_app", "mbus_codec", "mbus_frame", "mbus_map",
        "mbus_vif", "types")),
    *(f"simulator/{m}.py" for m in ("actuator", "meter", "meter_faults")),
)  # fmt: skip
AGENT_IO = frozenset(
    {"store", "uplink", "runner", "commands", "cli", "demo", "verify", "poll", "notify", "clock",
     "atomicfile", "broker", "customer", "serve"}
)  # fmt: skip
EXTERNAL_IO = frozenset(
    {"asyncio", "sqlite3", "sqlite_utils", "aiomqtt", "paho", "socket", "subprocess",
     "pymodbus", "serial", "threading", "concurrent"}
)  # fmt: skip


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> Iterator[str]:
    """Every module imported at run time (dotted), including imports inside functions."""
    skip: set[int] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and _type_checking(n):
            skip |= {id(x) for s in n.body for x in ast.walk(s)}
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Import):
            yield from (a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            if n.module == "agent":
                yield from (f"agent.{a.name}" for a in n.names)
            else:
                yield n.module


def test_decision_modules_do_no_io() -> None:
    bad: list[str] = []
    for name in DECISIONS:
        path = REPO / name
        assert path.is_file(), path
        for mod in imports(path):
            parts = mod.split(".")
            if parts[0] in EXTERNAL_IO or (parts[0] == "agent" and parts[1] in AGENT_IO):
                bad.append(f"{name} imports {mod}")
    assert not bad, "\n".join(bad)


# Shared on purpose: the names of the protocol, and the physical properties of water
# (IAPWS-IF97 table behind the EN 1434 heat coefficient): a simulated meter must compute
# heat as a real one does, or a healthy meter would look 1.5-2.5 % off to the checks.
SHARED_WITH_SIMULATOR = frozenset({"agent.protocol", "agent.plausibility_water"})


def test_drivers_and_simulator_do_not_import_the_agent() -> None:
    bad: list[str] = []
    files = [*sorted((REPO / "drivers").rglob("*.py")), *sorted((REPO / "simulator").rglob("*.py"))]
    assert len(files) > 5
    for path in files:
        for mod in imports(path):
            if mod.split(".")[0] == "agent" and mod not in SHARED_WITH_SIMULATOR:
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_import_scanner_sees_imports() -> None:
    found = set(imports(REPO / "agent" / "runner.py"))
    assert {"asyncio", "agent.store", "agent.uplink"} <= found
    assert "agent.runner_channel" not in set(imports(REPO / "agent" / "runner_storage.py"))
