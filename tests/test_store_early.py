"""The store opened early (``agent/store_early.py``): `dh-agent run` opens the database and
counts the boot on the store's thread while it imports the rest; the agent then uses that
store, counts the boot once, and handles an early failure as its own. In-process, a real
SQLite file, no broker (the uplink is built, never connected)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from agent.config import Config, load
from agent.runner import Agent
from agent.store_early import EarlyStore
from tests.support.rig import write_config


def config(tmp_path: Path) -> Config:
    return load(write_config(tmp_path, 1, "mqtt://127.0.0.1:1"))  # nothing listens on 1


async def opened(cfg: Config, early: EarlyStore | None) -> tuple[Agent, int]:
    agent = Agent(cfg, early=early)
    await agent.open()
    assert agent.store is not None
    boot = agent.boot
    await agent.call(agent.store.close)
    agent.db.shutdown(wait=True)
    return agent, boot


def test_the_agent_takes_the_early_store_and_counts_each_boot_once(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    boots = []
    for _ in range(3):
        early = EarlyStore(cfg.storage)
        agent, boot = asyncio.run(opened(cfg, early))
        assert agent.store is early.opened.result()  # not a second store
        assert agent.db is early.executor  # every store call on the thread that opened it
        boots.append(boot)
    agent, boot = asyncio.run(opened(cfg, None))  # the agent alone, as the tests start it
    assert [*boots, boot] == [1, 2, 3, 4]


def test_the_switch_interval_is_short_only_while_the_store_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    before = sys.getswitchinterval()
    gate = threading.Event()
    real = EarlyStore._next_boot

    def held(self: EarlyStore) -> int | None:
        gate.wait(10)  # the boot is not counted before the check below
        return real(self)

    monkeypatch.setattr(EarlyStore, "_next_boot", held)
    early = EarlyStore(cfg.storage)
    assert sys.getswitchinterval() == pytest.approx(EarlyStore.SWITCH_S)
    gate.set()
    assert early.boot.result(10) == 1
    assert sys.getswitchinterval() == pytest.approx(before)
    asyncio.run(opened(cfg, early))


def test_another_store_in_the_config_closes_the_early_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    early = EarlyStore(cfg.storage)
    other = dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, path=tmp_path / "other.db")
    )
    agent, boot = asyncio.run(opened(other, early))
    assert agent.store is not early.opened.result()
    assert early.opened.result()._closed  # closed on its own thread
    assert agent.store is not None and agent.store.path == tmp_path / "other.db"
    assert boot == 1


def test_a_corrupt_database_found_early_is_set_aside_as_always(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.storage.path.write_bytes(b"this is not a database" * 100)
    early = EarlyStore(cfg.storage)
    assert early.opened.exception() is not None and early.boot.result() is None
    agent, boot = asyncio.run(opened(cfg, early))
    assert agent.storage.replaced is not None and agent.storage.replaced.exists()
    assert boot == 1 and not agent.storage.state.active


def test_the_first_status_seqs_are_reserved_early(tmp_path: Path) -> None:
    """The first connection's ``online`` and will seqs need no disk write on the first
    publish's path: their block is reserved (durably) by the early opening."""
    cfg = config(tmp_path)
    early = EarlyStore(cfg.storage)
    assert early.boot.result(10) == 1
    with sqlite3.connect(f"file:{cfg.storage.path}?mode=ro", uri=True) as c:
        reserved = c.execute("SELECT last FROM seqs WHERE stream = 'status'").fetchone()
    assert reserved is not None and reserved[0] >= 2

    def two_seqs() -> list[int]:
        st = early.opened.result()
        writes = st.conn.total_changes
        seqs = [st.next_seq("status"), st.next_seq("status")]
        assert st.conn.total_changes == writes  # no write
        st.close()
        return seqs

    assert early.executor.submit(two_seqs).result(10) == [1, 2]
