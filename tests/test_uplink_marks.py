"""Issue 13 item 2 (the uplink's part): `mark_sent` failing on a full disk. The drain must
not publish the acknowledged messages again (it did: every message hundreds of times), and
marks them once the store takes writes again. Real Mosquitto; an outbox that fails."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from agent.jws import Signer, b64u_decode
from tests.support.mosquitto import Mosquitto
from tests.test_uplink import Collector, MemStore, add, await_until, ex, make_uplink, signer

__all__ = ["ex", "signer"]  # the fixtures


class FullDisk(MemStore):
    def __init__(self) -> None:
        super().__init__()
        self.full = True
        self.failed_marks = 0

    def mark_sent(self, ids: Sequence[int]) -> None:
        if self.full:
            self.failed_marks += 1
            raise sqlite3.OperationalError("database or disk is full")
        super().mark_sent(ids)


def test_a_failing_mark_sent_never_republishes(
    mosquitto: Mosquitto, signer: Signer, ex: ThreadPoolExecutor
) -> None:
    store = FullDisk()
    col = Collector(mosquitto.port)
    for i in range(50):
        add(store, signer, "interval", {"i": i})

    async def main() -> None:
        up = make_uplink(mosquitto.url, store, signer, ex)
        task = asyncio.create_task(up.run())
        try:
            await await_until(lambda: len(col.on("interval")) >= 50, 20, "the messages")
            await await_until(lambda: store.failed_marks >= 1, 10, "a failed mark")
            for _ in range(4):  # tail reached, rescans, new messages: no repeat
                add(store, signer, "event", {"n": 1})
                up.wake()
                await asyncio.sleep(0.5)
            assert store.backlog() == 54
            store.full = False  # space is back
            await await_until(lambda: store.backlog() == 0, 20, "the marks written")
            assert up.connects == 1
        finally:
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        seqs = [
            json.loads(b64u_decode(p.decode().split(".")[1]))["seq"] for p in col.on("interval")
        ]
        assert sorted(seqs) == list(range(1, 51)), "an interval was published more than once"
        assert len(col.on("event")) == 4
    finally:
        col.close()
