"""The drain's system-call savings (agent/uplink_wire.py) and the store's byte-ready read
(``Store.unsent_wire``), without a broker: a socket pair, paho's output queue, a store on
disk."""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer, envelope
from agent.store import Store
from agent.uplink_wire import (
    BufferedSocket,
    QuietLogger,
    begin_burst,
    buffered_reads,
    coalesce,
    end_burst,
)


def test_buffered_socket_hands_out_one_recv_in_small_reads() -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        s = BufferedSocket(b)
        a.sendall(b"\x40\x02\x00\x01\x40\x02\x00\x02")  # two MQTT PUBACKs
        time.sleep(0.05)
        got = [s.recv(1), s.recv(1), s.recv(2)]
        assert got == [b"\x40", b"\x02", b"\x00\x01"]
        assert s.pending() == 4  # aiomqtt's reader loops while this is > 0
        assert s.recv(1) == b"\x40" and s.recv(10) == b"\x02\x00\x02"  # short: what is left
        assert s.pending() == 0
        with pytest.raises(BlockingIOError):  # empty again: the socket's own answer
            s.recv(1)
        assert s.fileno() == b.fileno()  # anything else is the socket's
        a.close()
        assert s.recv(1) == b""  # EOF passes through
    finally:
        a.close()
        b.close()


def test_buffered_reads_only_on_a_plain_tcp_socket() -> None:
    class Inner:
        _sock: Any = None

    inner = Inner()
    assert not buffered_reads(inner)  # not connected
    a, b = socket.socketpair()
    try:
        inner._sock = a  # a plain stream socket (paho's is TCP; an SSLSocket is left alone)
        assert buffered_reads(inner)
        assert isinstance(inner._sock, BufferedSocket)
        assert not buffered_reads(inner)  # already wrapped: left alone
    finally:
        a.close()
        b.close()


def _pkt(command: int, qos: int, data: bytes, pos: int = 0) -> dict[str, Any]:
    return {
        "command": command,
        "mid": 0,
        "qos": qos,
        "pos": pos,
        "to_process": len(data) - pos,
        "packet": data,
        "info": None,
    }


def test_coalesce_joins_runs_of_qos1_publishes_only() -> None:
    class Inner:
        def __init__(self, q: deque[dict[str, Any]]) -> None:
            self._out_packet = q

    inner = Inner(
        deque(
            [
                _pkt(0x32, 1, b"AB", pos=1),  # partly written: left alone
                _pkt(0x32, 1, b"p1"),
                _pkt(0x32, 1, b"p2"),
                _pkt(0x30, 0, b"q0"),  # QoS 0: paho reports it when written
                _pkt(0x32, 1, b"p3"),
                _pkt(0xC0, 0, b"ping"),
                _pkt(0x32, 1, b"p4"),
                _pkt(0x33, 1, b"p5"),  # retained
            ]
        )
    )
    assert coalesce(inner) == 6
    got = [(p["packet"], p["to_process"], p["pos"]) for p in inner._out_packet]
    assert got == [
        (b"AB", 1, 1),
        (b"p1p2", 4, 0),
        (b"q0", 2, 0),
        (b"p3", 2, 0),
        (b"ping", 4, 0),
        (b"p4p5", 4, 0),
    ]
    assert coalesce(object()) == 0  # not paho: nothing done


def test_burst_writes_itself_and_leaves_a_full_socket_to_the_event_loop() -> None:
    class Paho:
        def __init__(self, take: int) -> None:
            self._out_packet: deque[dict[str, Any]] = deque()
            self.on_socket_register_write: Any = self.register
            self.registered = 0
            self.sent = b""
            self.take = take

        def register(self, client: Any, userdata: Any, sock: Any) -> None:
            self.registered += 1

        def want_write(self) -> bool:
            return bool(self._out_packet)

        def publish(self, data: bytes) -> None:
            self._out_packet.append(_pkt(0x32, 1, data))
            if self.on_socket_register_write is not None:
                self.on_socket_register_write(self, None, None)

        def loop_write(self) -> int:
            while self._out_packet and self.take:
                p = self._out_packet.popleft()
                self.sent += p["packet"]
                self.take -= 1
            return 0

        def user_data_get(self) -> None:
            return None

        def socket(self) -> None:
            return None

    inner = Paho(take=5)
    burst = begin_burst(inner)
    for i in range(4):
        inner.publish(b"m%d" % i)
    assert end_burst(inner, burst) == 0
    assert inner.sent == b"m0m1m2m3" and inner.registered == 0  # one write, no event loop
    assert inner.on_socket_register_write == inner.register

    inner.take = 0  # the socket is full: the rest waits for the event loop's writer
    burst = begin_burst(inner)
    inner.publish(b"m4")
    end_burst(inner, burst)
    assert inner.want_write() and inner.registered == 1

    burst = begin_burst(inner)  # something is waiting: the usual way
    assert burst is None
    inner.publish(b"m5")
    end_burst(inner, burst)
    assert inner.registered == 2 and inner.sent == b"m0m1m2m3"


def test_quiet_logger_passes_only_what_the_logger_takes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.uplink_wire.quiet")
    log.setLevel(logging.ERROR)
    q = QuietLogger(log)
    with caplog.at_level(logging.ERROR, logger=log.name):
        q.log(logging.DEBUG, "Received PUBACK (Mid: %d)", 1)
        q.log(logging.ERROR, "failed to receive on socket: %s", "boom")
    assert [r.getMessage() for r in caplog.records] == ["failed to receive on socket: boom"]


def test_unsent_wire_is_unsent_as_bytes(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    store = Store(tmp_path / "a.db")
    try:
        for i in range(40):
            stream = "interval" if i % 3 else "event"

            def sign(seq: int, prev: str | None, stream: str = stream, i: int = i) -> str:
                body = {"i": i, "text": "ü" * (i % 5), "x": [1.5, None, True]}
                return signer.sign(envelope("s", stream, seq, prev, time.time(), body))

            store.append_message(stream, f"dh/v1/s/{stream}", 1, i % 7 == 0, sign)
        store.mark_sent([3, 4, 10])
        for after, limit in ((0, 100), (5, 7), (38, 10)):
            a = store.unsent(limit, after)
            b = store.unsent_wire(limit, after)
            assert [(m.id, m.stream, m.seq, m.topic, m.qos, m.retain) for m in a] == [
                (m.id, m.stream, m.seq, m.topic, m.qos, m.retain) for m in b
            ]
            assert [m.payload.encode("ascii") for m in a] == [m.data for m in b]
            assert [m.payload for m in a] == [m.payload for m in b]
    finally:
        store.close()
