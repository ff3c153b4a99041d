"""Uplink faults: a broker that stops answering (SIGSTOP), a broker without MQTT 5."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer
from tests.support.mosquitto import Mosquitto, free_port, mosquitto  # noqa: F401
from tests.test_uplink import (
    Collector,
    MemStore,
    add,
    await_until,
    check_stream,
    make_uplink,
    wait_until,
)


def test_silent_broker_fails_the_session_and_nothing_is_lost(
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    """The broker process is frozen (SIGSTOP): the TCP connection stays up but no PUBACK
    comes. After ``timeout_s`` the uplink gives up on that connection, and once the broker
    thaws everything arrives, in order."""
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()
    ex = ThreadPoolExecutor(1)
    col = Collector(mosquitto.port)
    assert mosquitto.proc is not None
    pid = mosquitto.proc.pid

    async def main() -> int:
        up = make_uplink(mosquitto.url, store, signer, ex, timeout_s=1.0, connect_timeout_s=1.0)
        task = asyncio.create_task(up.run())
        await await_until(lambda: up.connected, 10, "connect")
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(50):
                add(store, signer, "interval", {"i": i})
            up.wake()
            await await_until(lambda: not up.connected, 10, "the session to be given up")
            assert store.backlog() > 0
        finally:
            os.kill(pid, signal.SIGCONT)
        await await_until(lambda: store.backlog() == 0, 20, "drain after thaw")
        connects = up.connects
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        return connects

    try:
        assert asyncio.run(main()) >= 2
        wait_until(lambda: len(set(col.on("interval"))) >= 50, 10, "all received")
        check_stream(col.on("interval"), signer, 50)
    finally:
        col.close()
        ex.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_falls_back_to_mqtt_311(caplog: pytest.LogCaptureFixture) -> None:
    """amqtt speaks only MQTT 3.1.1 and does not answer an MQTT 5 CONNECT at all."""
    amqtt_broker = pytest.importorskip("amqtt.broker")
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()
    for i in range(10):
        add(store, signer, "event", {"i": i})
    ex = ThreadPoolExecutor(1)
    caplog.set_level(logging.INFO, logger="agent.uplink")

    async def main() -> str:
        port = free_port()
        broker = amqtt_broker.Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "auth": {"allow-anonymous": True},
            }
        )
        await broker.start()
        try:
            up = make_uplink(f"mqtt://127.0.0.1:{port}", store, signer, ex, connect_timeout_s=1.0)
            task = asyncio.create_task(up.run())
            await await_until(lambda: store.backlog() == 0, 15, "drain via MQTT 3.1.1")
            protocol = str(up.protocol.name)
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)
            return protocol
        finally:
            await broker.shutdown()

    try:
        assert asyncio.run(main()) == "V311"
    finally:
        ex.shutdown()
    assert "next attempt with MQTT 3.1.1" in caplog.text
