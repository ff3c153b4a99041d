"""Issue 13 item 1: a broker that refuses messages (MQTT 5 PUBACK reason codes) and
subscriptions (SUBACK), with a real Mosquitto and an ACL file, and the real store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer
from agent.store import Store
from agent.uplink import MqttSettings, Uplink
from agent.uplink_drain import Refusal, classify, hold_delay
from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.test_uplink import BASE, PREFIX, SITE, Collector, await_until, check_stream
from tests.test_uplink_store import append

# anonymous clients (the agent and the collector): everything under the site but the
# event topic, which they may only read
ACL_DENY_EVENT = f"""topic readwrite {BASE}/interval
topic readwrite {BASE}/status
topic readwrite {BASE}/config/#
topic read {BASE}/event
"""
ACL_ALL = f"topic readwrite {BASE}/#\n"


@pytest.fixture
def ex() -> Iterator[ThreadPoolExecutor]:
    e = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
    yield e
    e.shutdown(wait=True)


def test_reason_codes_are_classified() -> None:
    assert classify(0) is None
    assert classify(0x10) is None  # no matching subscribers: accepted
    assert classify(0x87) == Refusal(0x87, "not authorized", True)
    assert classify(0x90) is not None and classify(0x90).permanent  # type: ignore[union-attr]
    assert classify(0x99) is not None and classify(0x99).permanent  # type: ignore[union-attr]
    quota = classify(0x97)
    assert quota is not None and not quota.permanent
    assert [hold_delay(a) for a in (0, 1, 2, 10)] == [1.0, 2.0, 4.0, 60.0]


def test_a_refused_subscription_is_reported_and_cleared() -> None:
    """SUBACK reason codes (MQTT 5 ``ReasonCode``, or 3.1.1 granted QoS 0x80). Mosquitto
    2.0's ACL file grants subscriptions and filters delivery instead, so the codes are given
    here as paho builds them from a SUBACK."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    up = Uplink(
        MqttSettings(url="mqtt://127.0.0.1:1", topic_prefix=PREFIX, site=SITE),
        Signer(Ed25519PrivateKey.generate()),
        None,  # type: ignore[arg-type]
        ThreadPoolExecutor(1),
        boot=1,
    )
    up._suback("a", [ReasonCode(PacketTypes.SUBACK, identifier=1)])
    assert up.refused_subscriptions == {}
    up._suback("a", [ReasonCode(PacketTypes.SUBACK, identifier=0x87)])
    up._suback("b", (0x80,))
    assert up.refused_subscriptions == {"a": "Not authorized", "b": "128"}
    up._suback("a", (1,))
    assert up.refused_subscriptions == {"b": "128"}
    # reported once per refusal as a `subscription_refused` event
    events: list[dict[str, Any]] = []

    async def on_event(ev: dict[str, Any]) -> None:
        events.append(ev)

    async def twice() -> None:
        up.on_event = on_event
        up._suback("c", (0x80,))
        up._suback("c", (0x80,))
        await asyncio.sleep(0.05)

    asyncio.run(twice())
    assert events == [{"kind": "subscription_refused", "topic": "c", "reason": "128"}]


def test_refused_event_stream_never_blocks_intervals_and_resend_retries_it(
    tmp_path: Path, ex: ThreadPoolExecutor
) -> None:
    """The ACL refuses the agent's events: the intervals stored behind them all arrive once,
    on one session; the events are recorded as refused (kept, reported); after the ACL is
    fixed, ``mark_unsent`` (``cmd resend``) sends them."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    broker = Mosquitto(tmp_path / "mosq", acl=ACL_DENY_EVENT, persistence=True)
    broker.start()
    signer = Signer(Ed25519PrivateKey.generate())
    store = ex.submit(Store, tmp_path / "agent.db").result()
    col = Collector(broker.port)
    cols = [col]
    reported: list[tuple[str, int, int]] = []

    async def on_refused(m: Any, r: Refusal) -> None:
        reported.append((m.stream, m.seq, r.code))

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def db(fn: Any, *a: Any) -> Any:
            return await loop.run_in_executor(ex, fn, *a)

        for i in range(40):  # events 1, 2, 3, 4 among intervals
            await db(append, store, signer, "event" if i % 10 == 3 else "interval", {"i": i})
        up = Uplink(
            MqttSettings(url=broker.url, topic_prefix=PREFIX, site=SITE),
            signer,
            store,
            ex,
            boot=1,
            backoff_base=0.1,
            backoff_cap=0.5,
            on_refused=on_refused,
            subscriptions=[f"{BASE}/config/set", f"{BASE}/cmd"],
        )
        task = asyncio.create_task(up.run())
        try:
            await await_until(lambda: len(set(col.on("interval"))) >= 36, 30, "the intervals")
            await await_until(lambda: len(reported) >= 4, 10, "the refusals reported")
            await asyncio.sleep(1.0)  # anything repeated would come now
            assert up.connects == 1, "a refusal must not end the session"
            assert await db(store.backlog) == {}
            refused = await db(store.refused)
            assert [(r["stream"], r["seq"], r["code"]) for r in refused] == [
                ("event", s, 0x87) for s in (1, 2, 3, 4)
            ]
            assert sorted(reported) == [("event", s, 0x87) for s in (1, 2, 3, 4)]
            assert await db(store.refused_count) == {"event": 4}
            # the operator fixes the ACL; resend retries the refused events
            broker.acl = ACL_ALL
            await asyncio.to_thread(broker.restart)
            await await_until(lambda: up.connects == 2 and up.connected, 20, "reconnect")
            late = Collector(broker.port, client_id="late")  # a head-end subscribed now
            cols.append(late)
            assert await db(store.mark_unsent, "event", 1, 4) == 4
            up.wake()
            await await_until(lambda: len(set(late.on("event"))) >= 4, 20, "the events")
            assert await db(store.refused) == []
        finally:
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        intervals = col.on("interval")
        check_stream(intervals, signer, 36)
        assert len(intervals) == 36, "each interval once: nothing re-published"
        check_stream(cols[1].on("event"), signer, 4)
    finally:
        for c in cols:
            c.close()
        ex.submit(store.close).result()
        broker.stop()


def test_a_transient_refusal_holds_only_its_stream(tmp_path: Path, ex: ThreadPoolExecutor) -> None:
    """A transient refusal (classified by reason code) holds that stream for a backoff and
    the stream is published again afterwards; the other streams go on meanwhile. Driven
    through the drain's PUBACK handler with a real broker: the first PUBACK of an event is
    rewritten to 0x97 (quota exceeded) as a broker under load would send it."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    import agent.uplink_drain as drain_mod

    broker = Mosquitto(tmp_path / "mosq", persistence=True)
    broker.start()
    signer = Signer(Ed25519PrivateKey.generate())
    store = ex.submit(Store, tmp_path / "agent.db").result()
    col = Collector(broker.port)
    refused_once: list[int] = []
    original = drain_mod.Drain.on_publish

    def flaky(self: Any, c: Any, u: Any, mid: int, rc: Any, props: Any = None) -> None:
        sid = self.window.sid_of(mid)
        m = self.inflight.get(sid) if sid is not None else None
        if m is not None and m.stream == "event" and not refused_once:
            refused_once.append(m.seq)
            rc = ReasonCode(PacketTypes.PUBACK, identifier=0x97)
        original(self, c, u, mid, rc, props)

    drain_mod.Drain.on_publish = flaky  # type: ignore[method-assign, assignment]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def db(fn: Any, *a: Any) -> Any:
            return await loop.run_in_executor(ex, fn, *a)

        for i in range(30):
            await db(append, store, signer, "event" if i in (0, 1) else "interval", {"i": i})
        up = Uplink(
            MqttSettings(url=broker.url, topic_prefix=PREFIX, site=SITE),
            signer,
            store,
            ex,
            boot=1,
            window=1,
        )
        task = asyncio.create_task(up.run())
        try:
            t0 = time.monotonic()
            await await_until(lambda: len(set(col.on("interval"))) >= 28, 20, "the intervals")
            assert "event" in up.holds
            await await_until(lambda: len(set(col.on("event"))) >= 2, 20, "the held events")
            assert time.monotonic() - t0 >= 0.5  # the hold was waited for
            assert up.connects == 1
            assert await db(store.backlog) == {}
        finally:
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        assert refused_once == [1]
        check_stream(col.on("interval"), signer, 28)
        check_stream(col.on("event"), signer, 2)
    finally:
        drain_mod.Drain.on_publish = original  # type: ignore[method-assign]
        col.close()
        ex.submit(store.close).result()
        broker.stop()
