"""Issue 13 item 5: oversized messages on `config/set` and `cmd`, and slow handlers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.jws import Signer
from agent.remote import decide_cmd, decide_config
from agent.uplink_conn import INBOX_SIZE, MAX_INBOUND_BYTES
from tests.support.mosquitto import Mosquitto
from tests.test_uplink import BASE, MemStore, await_until, ex, make_uplink, signer

__all__ = ["ex", "signer"]  # the fixtures


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def crafted(size: int) -> bytes:
    """A JWS-shaped message of about ``size`` bytes whose payload is valid JSON."""
    header = b64(json.dumps({"alg": "Ed25519", "kid": "x"}).encode())
    body = {"v": 1, "body": {"id": "a", "pad": ["x" * 64] * (size // 90)}}
    return f"{header}.{b64(json.dumps(body).encode())}.{b64(b'0' * 64)}".encode()


def test_an_oversized_message_is_rejected_before_it_is_parsed() -> None:
    raw = crafted(20 * 1024 * 1024)
    tracemalloc.start()
    try:
        d = decide_cmd(raw, keys={}, site="s", now=time.time(), seen_ids=set())
        c = decide_config(raw, keys={}, site="s", active_version=0, active=None)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.ack == {"id": None, "result": "rejected", "reason": "malformed: message too large"}
    assert c.ack["reason"] == "malformed: message too large"
    assert peak < 1024 * 1024, f"{peak} bytes allocated deciding a rejected message"


def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
    c.connect("127.0.0.1", port, 10)
    c.loop_start()
    try:
        for p in payloads:
            c.publish(topic, p, qos=1).wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def test_the_broker_never_hands_the_agent_an_oversized_message(
    mosquitto: Mosquitto, signer: Signer, ex: ThreadPoolExecutor
) -> None:
    got: list[tuple[str, int]] = []

    async def on_message(topic: str, payload: bytes) -> None:
        got.append((topic, len(payload)))

    async def main() -> None:
        up = make_uplink(
            mosquitto.url, MemStore(), signer, ex, on_message=on_message,
            subscriptions=[f"{BASE}/cmd", f"{BASE}/config/set"],
        )  # fmt: skip
        task = asyncio.create_task(up.run())
        try:
            await await_until(lambda: up.connected, 10, "connect")
            big = b"A" * (5 * 1024 * 1024)
            await asyncio.to_thread(publish, mosquitto.port, f"{BASE}/cmd", [big, b"small"])
            await asyncio.to_thread(publish, mosquitto.port, f"{BASE}/config/set", [big, b"s2"])
            await await_until(lambda: len(got) >= 2, 10, "the small messages")
            await asyncio.sleep(0.5)
            assert up.connected and up.connects == 1
        finally:
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert got == [(f"{BASE}/cmd", 5), (f"{BASE}/config/set", 2)]
    assert all(n <= MAX_INBOUND_BYTES + 1 for _, n in got)


def test_a_slow_handler_never_blocks_receiving_and_the_inbox_is_bounded(
    mosquitto: Mosquitto, signer: Signer, ex: ThreadPoolExecutor
) -> None:
    release = asyncio.Event()
    handled: list[bytes] = []

    async def on_message(topic: str, payload: bytes) -> None:
        if payload == b"slow":
            await release.wait()  # rotate_key waits for the broker like this
        handled.append(payload)

    async def main() -> Any:
        up = make_uplink(
            mosquitto.url, MemStore(), signer, ex, on_message=on_message,
            subscriptions=[f"{BASE}/cmd"],
        )  # fmt: skip
        task = asyncio.create_task(up.run())
        try:
            await await_until(lambda: up.connected, 10, "connect")
            msgs = [b"slow"] + [f"m{i}".encode() for i in range(60)]
            await asyncio.to_thread(publish, mosquitto.port, f"{BASE}/cmd", msgs)
            await await_until(lambda: up.inbound_dropped > 0, 10, "the inbox to fill")
            assert up.inbox.qsize() <= INBOX_SIZE and up.connected
            release.set()
            await asyncio.to_thread(publish, mosquitto.port, f"{BASE}/cmd", [b"after"])
            await await_until(lambda: b"after" in handled, 10, "a message after the burst")
            return up.inbound_dropped
        finally:
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

    dropped = asyncio.run(main())
    assert handled[0] == b"slow" and len(handled) + dropped >= 62 - INBOX_SIZE
