"""The drain's cheaper bookkeeping (issue 16): marks by runs of ids, the in-flight window's
fast paths against the plain model, and marks batched over a whole backlog."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer, envelope
from agent.store import Store
from agent.store_wire import id_runs
from agent.timefmt import rfc3339
from agent.uplink_drain import MARK_BATCH
from agent.uplink_window import Window
from tests.support.aio import await_until, run
from tests.support.mosquitto import Mosquitto
from tests.support.uplink_kit import MemStore, add, make_uplink


def test_id_runs_select_exactly_the_ids() -> None:
    assert id_runs([]) == []
    assert id_runs([7]) == [(7, 7)]
    assert id_runs([5, 3, 4, 4, 10, 21, 20, 12]) == [(3, 5), (10, 10), (12, 12), (20, 21)]
    rnd = random.Random(16)
    for _ in range(200):
        ids = rnd.sample(range(1, 300), rnd.randint(1, 120)) * rnd.randint(1, 2)
        covered = [i for a, b in id_runs(ids) for i in range(a, b + 1)]
        assert covered == sorted(set(ids))


def test_mark_sent_marks_exactly_the_given_ids(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    store = Store(tmp_path / "a.db")
    try:

        def sign(seq: int, prev: str | None) -> str:
            return signer.sign(envelope("s", "event", seq, prev, time.time(), {"n": seq}))

        for _ in range(30):
            store.append_message("event", "dh/v1/s/event", 1, False, sign)
        recs = [
            {
                "device": "hm1",
                "role": "heat_meter",
                "start": rfc3339(1.7e9 + i * 3600),
                "end": rfc3339(1.7e9 + i * 3600 + 3600),
                "period_s": 3600,
                "flags": [],
                "energy_kwh": 25.125 + i,
            }
            for i in range(10)
        ]

        def sign_body(body: dict[str, Any], seq: int, prev: str | None) -> str:
            return signer.sign(envelope("s", "interval", seq, prev, time.time(), body))

        store.commit_intervals("hm1", "{}", recs, "dh/v1/s/interval", sign_body)
        ids = [m.id for m in store.unsent(100)]
        assert len(ids) == 40

        def undelivered() -> set[int]:
            return {r[0] for r in store.conn.execute("SELECT msg FROM undelivered")}

        kept = undelivered()
        # the records keep their compressed payloads until delivered
        assert len(kept) == 10 and kept == set(ids[30:])
        chosen = [ids[5], ids[3], ids[4], ids[4], ids[10], ids[33], ids[32], ids[39], ids[35]]
        store.mark_sent(chosen)
        assert [m.id for m in store.unsent(100)] == [i for i in ids if i not in set(chosen)]
        assert undelivered() == kept - set(chosen)
        store.mark_sent([])
        assert len(store.unsent(100)) == 40 - len(set(chosen))
    finally:
        store.close()


class ModelWindow:
    """The window as it was first written: every call scans the acknowledged prefix."""

    def __init__(self, size: int) -> None:
        self.size, self.peak = size, 0
        self.order: deque[tuple[int, float]] = deque()
        self.mids: dict[int, int] = {}
        self.done: set[int] = set()

    def sent(self, sid: int, mid: int, qos: int, now: float) -> list[int]:
        self.order.append((sid, now))
        self.peak = max(self.peak, len(self.order))
        if qos == 0:
            self.done.add(sid)
        else:
            self.mids[mid] = sid
        return self.release()

    def ack(self, mid: int) -> list[int]:
        sid = self.mids.pop(mid, None)
        if sid is not None:
            self.done.add(sid)
        return self.release()

    def release(self) -> list[int]:
        out = []
        while self.order and self.order[0][0] in self.done:
            out.append(self.order.popleft()[0])
            self.done.discard(out[-1])
        return out


def test_window_fast_paths_release_what_the_plain_model_releases() -> None:
    rnd = random.Random(32)
    for _ in range(300):
        w, model = Window(8), ModelWindow(8)
        sid = mid = 0
        waiting: list[int] = []
        for step in range(200):
            if waiting and (len(w) >= w.size or rnd.random() < 0.5):
                # mostly in order, sometimes out of order, sometimes unknown or repeated
                r = rnd.random()
                m = waiting.pop(0 if r < 0.6 else rnd.randrange(len(waiting)))
                if r > 0.95:
                    m = rnd.choice([m, 9999])
                assert w.ack(m) == model.ack(m), step
            else:
                sid, mid = sid + 1, mid + 1
                qos = 0 if rnd.random() < 0.1 else 1
                if qos:
                    waiting.append(mid)
                assert w.sent(sid, mid, qos, float(step)) == model.sent(sid, mid, qos, float(step))
            assert len(w) == len(model.order) and w.peak == model.peak
            assert w.oldest_age(500.0) == (
                None
                if not model.order or model.order[0][0] in model.done
                else 500.0 - model.order[0][1]
            )


@pytest.fixture
def ex() -> Any:
    e = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
    yield e
    e.shutdown(wait=True)


def test_a_backlog_is_marked_in_batches(mosquitto: Mosquitto, ex: ThreadPoolExecutor) -> None:
    """The broker acknowledges a whole burst in one read, so the window runs empty between
    bursts; marks still wait for a batch while more is buffered (they used to go every
    50 or so ids)."""
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()
    n = 4000
    for i in range(n):
        add(store, signer, "interval", {"i": i})

    async def main() -> None:
        up = make_uplink(mosquitto.url, store, signer, ex)
        task = asyncio.create_task(up.run())
        await await_until(lambda: store.backlog() == 0, 60, "drain")
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)

    run(main())
    assert len(store.sent) == n
    # a batch per MARK_BATCH ids, a few short ones where a read was late and at the end
    assert store.mark_calls <= n // MARK_BATCH + n // 500 + 4, store.mark_calls
