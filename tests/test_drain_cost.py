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


def test_a_backlog_is_marked_in_batches(
    mosquitto: Mosquitto, ex: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker acknowledges a whole burst in one read, so the window runs empty between
    bursts; marks still wait for a batch while more is buffered (they used to go every
    50 or so ids). The PUBACKs take the fast path."""
    import agent.uplink_drain as drain_mod

    fast: list[Any] = []
    from agent.uplink_wire import fast_pubacks as install

    def spy(inner: Any, owns: Any) -> Any:
        fast.append(install(inner, owns))
        return fast[-1]

    monkeypatch.setattr(drain_mod, "fast_pubacks", spy)
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
    assert fast and fast[0] is not None and fast[0].taken == n  # Mosquitto: 0x10, no props


# --- PUBACKs of the drain's own publishes, without paho's decoding -------------------------


def puback_client(protocol: Any) -> tuple[Any, list[tuple[int, int, bool, str]]]:
    """A paho client (not connected) with three queued QoS 1 publishes (mids 1-3) and an
    ``on_publish`` that records what it is given."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    seen: list[tuple[int, int, bool, str]] = []

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, props: Any) -> None:
        seen.append((mid, rc.value, rc.is_failure, str(props)))

    c.on_publish = on_publish
    for _ in range(3):
        c.publish("t/x", b"p", qos=1)
    return c, seen


def feed(c: Any, packet: bytes) -> None:
    """paho handling one received PUBACK (as ``_packet_read`` hands it on)."""
    c._in_packet["command"] = 0x40
    c._in_packet["packet"] = bytearray(packet)
    c._packet_handle()


@pytest.mark.parametrize("protocol", [5, 4])
def test_fast_pubacks_complete_the_drains_publishes_as_paho_does(protocol: Any) -> None:
    from agent.uplink_wire import fast_pubacks, slow_pubacks

    accepted = [b"\x00\x01", b"\x00\x02\x10", b"\x00\x03\x00\x00"]
    if protocol == 4:  # MQTT 3.1.1: a PUBACK is the mid alone
        accepted = [b"\x00\x01", b"\x00\x02", b"\x00\x03"]
    plain, plain_seen = puback_client(protocol)
    fast_c, fast_seen = puback_client(protocol)
    fast = fast_pubacks(fast_c, lambda mid: mid in (1, 2, 3))
    assert fast is not None
    for p in accepted:
        feed(plain, p)
        feed(fast_c, p)
    assert fast.taken == 3  # none went through paho's decoding
    assert fast_seen == plain_seen and [s[0] for s in fast_seen] == [1, 2, 3]
    assert dict(fast_c._out_messages) == dict(plain._out_messages) == {}
    assert fast_c._inflight_messages == plain._inflight_messages
    feed(fast_c, b"\x00\x02")  # repeated: nothing to complete, nothing called
    assert len(fast_seen) == 3
    slow_pubacks(fast_c, fast)
    assert "_handle_pubackcomp" not in vars(fast_c)


def test_fast_pubacks_leave_everything_else_to_paho() -> None:
    from agent.uplink_wire import fast_pubacks

    c, seen = puback_client(5)
    c.publish("t/x", b"p", qos=1)  # mid 4
    fast = fast_pubacks(c, lambda mid: mid in (1, 2, 4))
    assert fast is not None
    feed(c, b"\x00\x01\x87")  # a refusal (not authorized)
    feed(c, b"\x00\x02\x10\x05\x1f\x00\x02ok")  # with a property (reason string)
    feed(c, b"\x00\x03\x10")  # not the drain's (a live publish): aiomqtt's handler
    with pytest.raises(Exception, match="name"):  # no PUBACK reason code: paho's error
        feed(c, b"\x00\x04\x11")
    assert fast.taken == 0
    assert [(mid, code, failed) for mid, code, failed, _ in seen] == [
        (1, 0x87, True),
        (2, 0x10, False),
        (3, 0x10, False),
    ]
    assert list(c._out_messages) == [4]


def test_fast_pubacks_only_on_the_paho_they_were_written_against() -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.uplink_wire import fast_pubacks

    class Other:
        pass

    assert fast_pubacks(Other(), lambda mid: True) is None

    class Renamed(paho.Client):  # a dispatcher that no longer calls it by that name
        def _packet_handle(self) -> Any:
            return 0

    r = Renamed(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    assert fast_pubacks(r, lambda mid: True) is None
    assert "_handle_pubackcomp" not in vars(r)
    c: Any = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c._in_packet = None
    assert fast_pubacks(c, lambda mid: True) is None
