"""Uplink faults: a broker that stops answering (SIGSTOP), a broker without MQTT 5."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer
from tests.support.aio import await_until, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.net import free_port
from tests.support.uplink_kit import Collector, MemStore, add, check_stream, make_uplink


def test_silent_broker_fails_the_session_and_nothing_is_lost(
    mosquitto: Mosquitto,
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


# --- the in-flight window, seen on the wire ----------------------------------------------------


PROXY = r"""
import asyncio, json, sys

async def read_packet(r):
    head = await r.readexactly(1)
    raw, length, shift = b"", 0, 0
    while True:
        b = await r.readexactly(1)
        raw += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    return head + raw + await r.readexactly(length), 1 + len(raw)

broker_port, delay = int(sys.argv[1]), float(sys.argv[2])
outstanding, stats = set(), {"peak": 0, "publishes": 0}

async def conn(cr, cw):
    br, bw = await asyncio.open_connection("127.0.0.1", broker_port)

    async def up():  # client -> broker
        while True:
            p, h = await read_packet(cr)
            if p[0] >> 4 == 3 and (p[0] >> 1) & 3:  # PUBLISH, QoS > 0: topic, packet id
                tlen = int.from_bytes(p[h:h + 2], "big")
                outstanding.add(int.from_bytes(p[h + 2 + tlen:h + 4 + tlen], "big"))
                stats["peak"] = max(stats["peak"], len(outstanding))
                stats["publishes"] += 1
            bw.write(p)
            await bw.drain()

    async def down():  # broker -> client
        while True:
            p, h = await read_packet(br)
            if p[0] >> 4 == 4:  # PUBACK: held back a little, counted off when forwarded
                await asyncio.sleep(delay)
                outstanding.discard(int.from_bytes(p[h:h + 2], "big"))
            cw.write(p)
            await cw.drain()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    cw.close()
    bw.close()

async def main():
    server = await asyncio.start_server(conn, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps(stats), flush=True)

asyncio.run(main())
"""


class CountingProxy:
    """A TCP proxy process between the uplink and Mosquitto that reads the MQTT packets both
    ways: it counts the QoS 1 PUBLISH packet ids the client sent whose PUBACK the client has
    not been given yet (peak), and holds every PUBACK back ``delay`` s, so that the client's
    window fills. A process of its own: an observer in the test's process would see the
    traffic late (the GIL)."""

    def __init__(self, broker_port: int, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROXY, str(broker_port), str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stats(self) -> dict[str, int]:
        """Stop the proxy; its counts."""
        out, _ = self.proc.communicate("", timeout=10)
        result = json.loads(out.strip().splitlines()[-1])
        assert isinstance(result, dict)
        return result


@pytest.mark.parametrize("window", [1, 8])
def test_in_flight_window_is_bounded_on_the_wire(mosquitto: Mosquitto, window: int) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()
    n = 120
    for i in range(n):
        add(store, signer, "interval", {"i": i})
    ex = ThreadPoolExecutor(1)
    col = Collector(mosquitto.port)

    async def main() -> int:
        up = make_uplink(f"mqtt://127.0.0.1:{proxy.port}", store, signer, ex, window=window)
        task = asyncio.create_task(up.run())
        await await_until(lambda: store.backlog() == 0, 20, "drain through the proxy")
        peak = up.inflight_peak
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        return peak

    proxy = CountingProxy(mosquitto.port, delay=0.002)
    try:
        own_peak = asyncio.run(main())
        st = proxy.stats()
        wire_peak, publishes = st["peak"], st["publishes"]
        # status online + n stored + status offline
        assert publishes == n + 2
        # never more than the window unacknowledged on the wire; and the window was used
        assert wire_peak == window, (wire_peak, own_peak)
        assert own_peak == window
        wait_until(lambda: len(col.on("interval")) >= n, 10, "all received")
        check_stream(col.on("interval"), signer, n)
    finally:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait()
        col.close()
        ex.shutdown()


# --- reconnect: exponential backoff with jitter, measured on a closing listener -----------------


def test_reconnect_backs_off_exponentially_with_jitter() -> None:
    """A listener that accepts and at once closes every connection (a broker that is up but
    refuses): the gaps between the uplink's attempts follow backoff_delay(attempt, rnd)."""
    import socket

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    times: list[float] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            times.append(time.monotonic())
            c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    rnds = iter([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0] + [1.0] * 10)
    signer = Signer(Ed25519PrivateKey.generate())
    ex = ThreadPoolExecutor(1)

    async def main() -> None:
        up = make_uplink(
            f"mqtt://127.0.0.1:{port}",
            MemStore(),
            signer,
            ex,
            backoff_base=0.05,
            backoff_cap=0.8,
            connect_timeout_s=1.0,
            rng=lambda: next(rnds),
        )
        task = asyncio.create_task(up.run())
        await await_until(lambda: len(times) >= 8, 15, "8 attempts")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert up.connects == 0 and up.last_error is not None

    try:
        asyncio.run(main())
    finally:
        srv.close()
        ex.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(times)][:7]
    expected = [0.1, 0.2, 0.4, 0.8, 0.4, 0.8, 0.4]  # attempt 1..7; rnd 0.0 halves, cap 0.8
    for g, e in zip(gaps, expected, strict=True):
        assert e <= g <= e + 0.3, (gaps, expected)
