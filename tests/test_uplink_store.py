"""The uplink with the real ``agent.store.Store`` (SQLite on disk) and a real Mosquitto:
an outage, and a producer killed with SIGKILL and restarted on the same database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer, envelope
from agent.keys import keygen, load_private
from agent.uplink import MqttSettings, Uplink
from tests.support.aio import await_until, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.uplink_kit import BASE, PREFIX, SITE, Collector, check_stream, jose_payload

store_mod = pytest.importorskip("agent.store")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ex() -> Iterator[ThreadPoolExecutor]:
    e = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
    yield e
    e.shutdown(wait=True)


def append(store: Any, signer: Signer, stream: str, body: dict[str, Any]) -> Any:
    def sign(seq: int, prev: str | None) -> str:
        return signer.sign(envelope(SITE, stream, seq, prev, time.time(), body))

    return store.append_message(stream, f"{BASE}/{stream}", 1, False, sign)


def unsent_total(store: Any) -> int:
    return int(sum(store.backlog().values()))


def test_real_store_survives_an_outage(
    mosquitto_durable: Mosquitto,
    tmp_path: Path,
    ex: ThreadPoolExecutor,
) -> None:
    """Stored while the broker is down, published once it is back: nothing lost, in order.
    (The broker keeps the collector's session across its restart.)"""
    mosquitto = mosquitto_durable
    signer = Signer(Ed25519PrivateKey.generate())
    store = ex.submit(store_mod.Store, tmp_path / "agent.db").result()
    col = Collector(mosquitto.port)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def db(fn: Any, *a: Any) -> Any:
            return await loop.run_in_executor(ex, fn, *a)

        for i in range(200):
            await db(append, store, signer, "interval" if i % 4 else "event", {"i": i})
        up = Uplink(
            MqttSettings(url=mosquitto.url, topic_prefix=PREFIX, site=SITE),
            signer,
            store,
            ex,
            boot=await db(store.next_boot),
            backoff_base=0.1,
            backoff_cap=0.5,
        )
        task = asyncio.create_task(up.run())
        await await_until(lambda: up.connected, 10, "connect")
        await asyncio.to_thread(mosquitto.stop)
        for i in range(200, 400):
            await db(append, store, signer, "interval" if i % 4 else "event", {"i": i})
            up.wake()
            await asyncio.sleep(0.01)
        await asyncio.to_thread(mosquitto.restart)
        end = time.monotonic() + 30
        while await db(unsent_total, store):
            assert time.monotonic() < end, "backlog not drained"
            await asyncio.sleep(0.05)
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        wait_until(lambda: len(set(col.on("interval"))) >= 300, 10, "interval")
        wait_until(lambda: len(set(col.on("event"))) >= 100, 10, "event")
        check_stream(col.on("interval"), signer, 300)
        check_stream(col.on("event"), signer, 100)
    finally:
        col.close()
        ex.submit(store.close).result()


CHILD = r"""
import asyncio, sys, time
from concurrent.futures import ThreadPoolExecutor
from agent.jws import Signer, envelope
from agent.keys import load_private
from agent.store import Store
from agent.uplink import MqttSettings, Uplink

url, key, db, base, prefill = sys.argv[1:6]
signer = Signer(load_private(key))
ex = ThreadPoolExecutor(1)

def append(store, i):
    def sign(seq, prev):
        return signer.sign(envelope("site-1", "interval", seq, prev, time.time(), {"i": i}))
    return store.append_message("interval", base + "/interval", 1, False, sign)

def fill(store, n):
    for i in range(n):
        append(store, -1)

async def main():
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(ex, Store, db)
    boot = await loop.run_in_executor(ex, store.next_boot)
    await loop.run_in_executor(ex, fill, store, int(prefill))  # the backlog
    up = Uplink(MqttSettings(url=url, topic_prefix="dh/v1", site="site-1"), signer, store, ex,
                boot=boot, window=2, backoff_base=0.1, backoff_cap=0.5)
    task = asyncio.create_task(up.run())
    print("draining", flush=True)
    i = 0
    while True:  # new messages keep coming while the backlog drains
        await loop.run_in_executor(ex, append, store, i)
        up.wake()
        i += 1
        await asyncio.sleep(0.002)

asyncio.run(main())
"""


def test_kill9_during_a_drain_never_reuses_a_seq_and_the_chain_continues(
    mosquitto: Mosquitto,
    tmp_path: Path,
    ex: ThreadPoolExecutor,
) -> None:
    """Two lives of an uplink on one database, each killed with SIGKILL in the middle of
    draining a backlog (some of it acknowledged, some not, new messages being appended),
    then a third life drains the rest. The head-end sees seq 1..n of one chain: no gap,
    no seq with two different messages; what was acknowledged but not yet marked sent
    when the process died arrives twice, the same bytes."""
    keygen(tmp_path)
    key = tmp_path / "agent.key"
    signer = Signer(load_private(key))
    db = tmp_path / "agent.db"
    col = Collector(mosquitto.port)
    try:
        for prefill in (600, 200):  # two lives, each ended by SIGKILL mid-drain
            seen = len(col.on("interval"))
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, mosquitto.url, str(key), str(db), BASE, str(prefill)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "draining"
            target = seen + 150
            wait_until(lambda: len(col.on("interval")) >= target, 20, "drain under way")  # noqa: B023
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            # killed mid-drain: part of the stored stream acknowledged, part still unsent
            store = ex.submit(store_mod.Store, db).result()
            left = ex.submit(unsent_total, store).result()
            total = len(ex.submit(store.messages, "interval", 1, 10**9).result())
            ex.submit(store.close).result()
            assert 0 < left < total, (left, total)
        # a third life drains whatever is left
        store = ex.submit(store_mod.Store, db).result()

        async def drain() -> int:
            loop = asyncio.get_running_loop()
            up = Uplink(
                MqttSettings(url=mosquitto.url, topic_prefix=PREFIX, site=SITE),
                signer,
                store,
                ex,
                boot=await loop.run_in_executor(ex, store.next_boot),
            )
            task = asyncio.create_task(up.run())
            end = time.monotonic() + 20
            while await loop.run_in_executor(ex, unsent_total, store):
                assert time.monotonic() < end
                await asyncio.sleep(0.05)
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)
            return up.boot

        boot3 = asyncio.run(drain())
        stored = ex.submit(store.messages, "interval", 1, 10**9).result()
        n = len(stored)
        assert [m.seq for m in stored] == list(range(1, n + 1))
        ex.submit(store.close).result()
        assert n > 800
        wait_until(lambda: len(set(col.on("interval"))) >= n, 15, "every interval message")
        got = col.on("interval")
        check_stream(got, signer, n)  # 1..n, in order, chained, one message per seq
        assert set(got) == {m.payload.encode() for m in stored}  # the stored bytes, no others
        status = [jose_payload(p, signer.public_key)["body"] for p in col.on("status")]
        # each killed life: online then its will (offline) with the same boot
        assert [(s["state"], s["boot"]) for s in status] == [
            ("online", boot3 - 2),
            ("offline", boot3 - 2),
            ("online", boot3 - 1),
            ("offline", boot3 - 1),
            ("online", boot3),
            ("offline", boot3),
        ]
    finally:
        col.close()
