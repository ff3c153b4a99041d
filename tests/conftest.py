"""Shared fixtures (real Mosquitto brokers: tests/support/mosquitto.py) and the test lanes.

Lanes (docs/development.md): ``bash tests/run.sh`` runs everything;
``bash tests/run.sh --fast`` runs ``-m "not slow and not integration"``. A test is
``integration`` when it is marked so, or when it (or a function of its own module that it
calls) uses a broker fixture or names one of ``PROCESS_HELPERS``: anything that starts a
broker, the simulator, the agent or another process. So a new test that starts real
processes leaves the fast lane by itself; mark anything else long ``slow``.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.mosquitto import mosquitto, mosquitto_durable, mosquitto_tls

__all__ = ["mosquitto", "mosquitto_durable", "mosquitto_tls"]

# Judge by content, never by wall time: no per-example deadline (hypothesis' default is
# 200 ms, which a busy machine or four workers on two cores can exceed in a test that
# takes a millisecond alone). A test's own @settings still sets its other limits.
settings.register_profile("dh", deadline=None)
settings.load_profile("dh")

BROKER_FIXTURES = frozenset({"mosquitto", "mosquitto_durable", "mosquitto_tls"})
PROCESS_HELPERS = frozenset(
    {
        "Mosquitto",  # tests.support.mosquitto
        "Collector",  # tests.support.uplink_kit: a paho subscriber
        "simulator",  # tests.support.rig: dh-sim as a process
        "start_agent",  # tests.support.rig: dh-agent run as a process
        "run_scaled",  # tests.support.scaled: the simulator and the agent in process
        "SimServer",  # the simulator's Modbus servers in process
        "Popen",  # any long-lived child process
    }
)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _code_objects(c)


def _names(fn: object, module: types.ModuleType, seen: set[int], depth: int = 0) -> set[str]:
    """Global and attribute names used by ``fn``, its nested functions, and the functions
    of the same module it calls (a few levels deep)."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or id(code) in seen or depth > 3:
        return set()
    seen.add(id(code))
    names: set[str] = set()
    for c in _code_objects(code):
        names.update(c.co_names)
    for n in list(names):
        g = getattr(module, n, None)
        if isinstance(g, types.FunctionType) and g.__module__ == module.__name__:
            names |= _names(g, module, seen, depth + 1)
    return names


def uses_processes(item: pytest.Function) -> bool:
    if BROKER_FIXTURES & set(item.fixturenames):
        return True
    return bool(PROCESS_HELPERS & _names(item.function, item.module, set()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and item.get_closest_marker("integration") is None
            and uses_processes(item)
        ):
            item.add_marker(pytest.mark.integration)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # In parallel workers (``pytest -n``): the long tests first, so that no worker
        # starts a minutes-long test when the others are already done. A stable sort
        # keeps the order within each group, and every worker sorts alike.
        items.sort(key=_lane_rank)


def _lane_rank(item: pytest.Item) -> int:
    if item.get_closest_marker("slow") is not None:
        return 0
    return 1 if item.get_closest_marker("integration") is not None else 2
