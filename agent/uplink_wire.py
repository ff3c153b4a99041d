"""Fewer system calls per stored message on a plain TCP broker connection (the drain's hot
path; measured by ``bench/drain.py``).

paho reads a PUBACK with three ``recv`` calls (command byte, length byte, the rest) and
writes every queued packet with its own ``send``: a 10,000-message backlog cost about
40,000 system calls, each one a chance for the store's thread to take the GIL.

- ``BufferedSocket`` hands paho's small reads out of one ``recv`` of up to 64 KiB; it has
  ``pending()``, which aiomqtt's reader already checks (the way it drains ``SSLSocket``), so
  nothing read ahead is left waiting for the next readiness event. Installed on plain TCP
  sockets only (a TLS socket buffers on its own).
- ``coalesce`` joins consecutive queued QoS 1/2 PUBLISH packets of paho's output queue
  into one buffer, written with one ``send`` (and read by the broker in one go). paho does
  nothing when such a packet is written (its PUBACK completes it), so joining them changes
  nothing but the number of writes. QoS 0 packets (paho reports them when written) and a
  packet partly written are left as they are.

- ``begin_burst`` / ``end_burst`` write a burst of stored publishes at once, from the
  drain (paho's public ``loop_write``), instead of registering the socket for writing with
  the event loop (aiomqtt: a thread-safe callback, an ``add_writer`` and a
  ``remove_writer``, two more loop turns per burst). Only when nothing was waiting to be
  written when the burst began; what the socket does not take is left to aiomqtt's writer
  as before.
- ``QuietLogger`` stands between paho and its logger: paho logs two DEBUG lines per
  message, each a call into ``logging`` that the uplink's logger (ERROR) drops; this asks
  the logger first (``isEnabledFor``, cached by ``logging``) and calls it only then.

- ``FastPubacks`` completes the drain's own publishes from their PUBACKs without paho's
  MQTT 5 decoding (a new ``ReasonCode`` twice and a ``Properties`` per PUBACK, about a
  third of the drain's CPU on the event loop); refusals and everything else go to paho.

``BufferedSocket``, ``coalesce`` and ``FastPubacks`` look at paho internals (``_sock``,
``_out_packet``; ``_packet_handle``, ``_handle_pubackcomp``, ``_in_packet``,
``_out_messages``, ``_out_message_mutex``, ``_do_on_publish``, ``_protocol``,
``_logger``); when these are not what they were written against, they do nothing and
paho works as it always did.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any

READ_SIZE = 65536
PUBLISH = 0x30


class BufferedSocket:
    """A plain socket whose ``recv`` serves small reads from one larger read."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        pos = self._pos
        buf = self._buf
        if pos < len(buf):
            end = pos + n
            self._pos = end  # past the end: slicing stops there, pending() is then <= 0
            return buf[pos:end]
        data: bytes = self._sock.recv(READ_SIZE)  # BlockingIOError, b"" at EOF: paho's
        if len(data) <= n:
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed out."""
        return max(0, len(self._buf) - self._pos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffered_reads(inner: Any) -> bool:
    """Give paho client ``inner`` a ``BufferedSocket``; False (nothing changed) when its
    socket is not a plain TCP socket (TLS, not connected, another paho)."""
    sock = getattr(inner, "_sock", None)
    if type(sock) is not socket.socket or sock.type != socket.SOCK_STREAM:
        return False
    inner._sock = BufferedSocket(sock)
    return True


class QuietLogger:
    """What paho needs of a logger (``log``), asking ``isEnabledFor`` first."""

    __slots__ = ("enabled", "logger")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.enabled = logger.isEnabledFor

    def log(self, level: int, msg: str, *args: Any) -> None:
        if self.enabled(level):
            self.logger.log(level, msg, *args)


def quiet_logging(inner: Any, logger: logging.Logger) -> None:
    """paho client ``inner`` logs to ``logger`` through a ``QuietLogger``."""
    enable = getattr(inner, "enable_logger", None)
    if enable is not None:
        enable(QuietLogger(logger))


def _no_register(client: Any, userdata: Any, sock: Any) -> None:
    """paho's register-write callback during a burst: the burst writes itself."""


def begin_burst(inner: Any) -> Any:
    """Before publishing a burst: when nothing is waiting to be written, paho's
    register-write callback is set aside (returned, for ``end_burst``); else None and
    nothing changes."""
    if inner.want_write():
        return None
    original = inner.on_socket_register_write
    if original is None:
        return None
    inner.on_socket_register_write = _no_register
    return original


def end_burst(inner: Any, original: Any) -> int:
    """After a burst: join its packets (``coalesce``) and, when ``begin_burst`` set the
    callback aside, put it back and write them now; what the socket did not take is
    registered for writing the usual way. Returns paho's ``loop_write`` code (0 = success)."""
    coalesce(inner)
    if original is None:
        return 0
    inner.on_socket_register_write = original
    rc = int(inner.loop_write())
    if inner.want_write():
        # paho already counts the socket as registered (the callback set aside was called):
        # register it with the event loop through the real callback
        original(inner, inner.user_data_get(), inner.socket())
    return rc


def _mergeable(p: Any) -> bool:
    """A queued packet that can be joined with its neighbours: a QoS 1/2 PUBLISH, not
    written at all yet."""
    try:
        return bool(
            p["pos"] == 0
            and p["command"] & 0xF0 == PUBLISH
            and p["qos"] > 0
            and p["to_process"] == len(p["packet"])
        )
    except (KeyError, TypeError):
        return False


def coalesce(inner: Any) -> int:
    """Join runs of queued QoS > 0 PUBLISH packets in paho's output queue; returns how many
    packets are left (0 when the queue is not what this was written against)."""
    q = getattr(inner, "_out_packet", None)
    if not isinstance(q, deque):
        return 0
    if len(q) < 2:
        return len(q)
    out: list[Any] = []
    run: list[Any] = []
    for p in q:
        if _mergeable(p):
            run.append(p)
            continue
        _close_run(run, out)
        out.append(p)
    _close_run(run, out)
    if len(out) < len(q):
        q.clear()
        q.extend(out)
    return len(q)


def _close_run(run: list[Any], out: list[Any]) -> None:
    if len(run) > 1:
        head = dict(run[0])
        head["packet"] = packet = b"".join([p["packet"] for p in run])
        head["to_process"] = len(packet)
        out.append(head)
    else:
        out.extend(run)
    run.clear()


# PUBACK reason codes of an accepted message: success, no matching subscribers
_ACCEPTED = (0x00, 0x10)


class FastPubacks:
    """paho's PUBACK handler for the drain's own publishes (``install``): a PUBACK without
    properties that accepts a message the drain owns goes straight to paho's completion
    (``_do_on_publish``: the drain's ``on_publish``, the in-flight count, the next queued
    message) with a ``ReasonCode`` and an empty ``Properties`` made once, instead of
    decoding it into new ones (paho builds two ``ReasonCode`` and one ``Properties`` per
    MQTT 5 PUBACK: about a third of the drain's CPU on the event loop). Anything else (a
    refusal, properties, another client's mid, PUBCOMP) goes to paho's own handler."""

    def __init__(self, inner: Any, owns: Any) -> None:
        from paho.mqtt.enums import MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.reasoncodes import ReasonCode

        self.inner = inner
        self.owns = owns
        lg = getattr(inner, "_logger", None)  # paho's logger, as ``quiet_logging`` set it
        self.logger: Any = lg.logger if isinstance(lg, QuietLogger) else lg
        self.paho = type(inner)._handle_pubackcomp.__get__(inner)
        self.v5 = inner._protocol == MQTTProtocolVersion.MQTTv5
        self.codes = {c: ReasonCode(PacketTypes.PUBACK, identifier=c) for c in _ACCEPTED}
        self.props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
        self.taken = 0  # PUBACKs handled here

    def __call__(self, cmd: str) -> Any:
        if cmd == "PUBACK":
            inner = self.inner
            pkt = inner._in_packet["packet"]
            n = len(pkt)
            # mid; MQTT 5 only: reason code, property length 0
            if n == 2 or (self.v5 and (n == 3 or (n == 4 and pkt[3] == 0))):
                rc = self.codes.get(pkt[2] if n > 2 else 0)
                mid = pkt[0] << 8 | pkt[1]
                if rc is not None and self.owns(mid):
                    lg = self.logger
                    if lg is not None and lg.isEnabledFor(logging.DEBUG):
                        lg.debug("Received PUBACK (Mid: %d)", mid)
                    self.taken += 1
                    with inner._out_message_mutex:
                        if mid in inner._out_messages:
                            return inner._do_on_publish(mid, rc, self.props)
                    return 0
        return self.paho(cmd)


def fast_pubacks(inner: Any, owns: Any) -> FastPubacks | None:
    """Put a ``FastPubacks`` in front of paho client ``inner``'s PUBACK handler (until
    ``slow_pubacks``); None (nothing changed) when ``inner`` is not the paho this was
    written against: its packet dispatcher must call ``_handle_pubackcomp`` by name, and
    the state the fast path reads must be there."""
    cls = type(inner)
    try:
        handle = cls._packet_handle.__code__
        if "_handle_pubackcomp" not in handle.co_names or "_handle_pubackcomp" in vars(inner):
            return None
        if not callable(getattr(cls, "_do_on_publish", None)):
            return None
        if not isinstance(inner._in_packet, dict) or "packet" not in inner._in_packet:
            return None
        if not hasattr(inner._out_messages, "__contains__"):
            return None
        mutex = inner._out_message_mutex
        if not (hasattr(mutex, "__enter__") and hasattr(mutex, "__exit__")):
            return None
        fast = FastPubacks(inner, owns)
    except Exception:  # another paho: leave it as it is
        return None
    inner._handle_pubackcomp = fast
    return fast


def slow_pubacks(inner: Any, fast: FastPubacks | None) -> None:
    """Undo ``fast_pubacks``."""
    if fast is not None and vars(inner).get("_handle_pubackcomp") is fast:
        del inner._handle_pubackcomp
