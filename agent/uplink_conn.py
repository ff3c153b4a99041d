"""Connection helpers of the uplink: broker URL, TLS context, reconnect backoff, readable
connection errors, a CONNECT that fails fast, TCP_NODELAY."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.dataclass_lite import frozen

# subscribed messages (config/set, cmd): the operator's limit is 64 KiB; the broker is told
# (MQTT 5 Maximum Packet Size) not to send a packet much larger, and at most INBOX_SIZE
# wait for their handler
MAX_INBOUND_BYTES = 64 * 1024
MAX_PACKET_BYTES = MAX_INBOUND_BYTES + 4096  # topic, properties, header
INBOX_SIZE = 16


def connect_properties() -> Properties:
    """MQTT 5 CONNECT properties: the Maximum Packet Size the agent accepts."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = MAX_PACKET_BYTES
    return props


@frozen
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883); user:pass@ allowed."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{url!r}: scheme must be mqtt:// or mqtts://")
    if not u.hostname:
        raise ValueError(f"{url!r}: no host")
    tls = u.scheme == "mqtts"
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError as e:
        raise ValueError(f"{url!r}: bad port") from e
    return BrokerAddress(
        host=u.hostname,
        port=port,
        tls=tls,
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
    )


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Server verification against ``ca_file`` (the system CAs when None), hostname checked;
    optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def backoff_delay(attempt: int, rnd: float, base: float = 0.5, cap: float = 1.5) -> float:
    """Exponential backoff with equal jitter: in [d/2, d], d = min(cap, base * 2**attempt).

    The uplink's defaults (0.5 s, capped at 1.5 s in a short outage) put the first attempt
    after a broker's return within 1.5 s, so the backlog is through within 2 s (issue 16's
    target); the jitter spreads a fleet's reconnects over 0.75..1.5 s. A long outage
    backs off further (``backoff_cap_for``)."""
    d = min(cap, base * (2.0 ** min(attempt, 30)))
    return d * (0.5 + 0.5 * min(max(rnd, 0.0), 1.0))


def backoff_cap_for(
    outage_s: float, short_cap: float = 1.5, long_cap: float = 30.0, long_after_s: float = 600.0
) -> float:
    """The backoff's cap ``outage_s`` into an outage: short for its first ``long_after_s``
    (a broker restart, a short LTE drop: back within 2 s of the broker), then long: an
    outage of hours would otherwise cost a connection attempt every second over a metered
    LTE link (about 100 bytes each, some 300 kB an hour), now one every 15-30 s."""
    return short_cap if outage_s < long_after_s else max(short_cap, long_cap)


def describe_error(e: BaseException, addr: BrokerAddress, ca_file: str | None) -> str:
    """A one-line, actionable reason for a failed connection."""
    text = str(e) or type(e).__name__
    where = f"{'mqtts' if addr.tls else 'mqtt'}://{addr.host}:{addr.port}"
    low = text.lower()
    if "certificate verify failed" in low:
        src = f"ca_file {ca_file}" if ca_file else "the system CA store"
        return f"TLS: {where}: the broker's certificate does not verify against {src} ({text})"
    if "ssl" in low or "tls" in low:
        return f"TLS: {where}: {text}"
    if "connection refused" in low:
        return f"{where}: connection refused (broker down?)"
    return f"{where}: {text}"


def payload_bytes(p: Any) -> bytes:
    if p is None:
        return b""
    if isinstance(p, bytes | bytearray):
        return bytes(p)
    return str(p).encode("utf-8")


async def connect(client: aiomqtt.Client) -> None:
    """``client.__aenter__()``, but failing at once when the broker closes the connection
    before its CONNACK (aiomqtt alone waits for its whole timeout then): a TLS client
    certificate it requires, a protocol version it does not speak."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    inner = getattr(client, "_client", None)  # the paho client
    original = getattr(inner, "on_disconnect", None)
    if inner is not None and original is not None:

        def on_disconnect(*args: Any) -> None:
            if not closed.done():
                closed.set_result(None)
            original(*args)

        inner.on_disconnect = on_disconnect
    enter = asyncio.ensure_future(client.__aenter__())
    either: list[asyncio.Future[Any]] = [enter, closed]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        enter.cancel()
        raise
    finally:
        if inner is not None and original is not None:
            inner.on_disconnect = original
    if enter.done():
        enter.result()
        return
    await asyncio.sleep(0.05)  # a refusing CONNACK may be right behind
    if enter.done():
        enter.result()
        return
    enter.cancel()
    await asyncio.gather(enter, return_exceptions=True)
    raise aiomqtt.MqttError(
        "the broker closed the connection before accepting it (TLS client certificate "
        "required? MQTT version not supported?)"
    )


def no_delay(client: aiomqtt.Client) -> None:
    """TCP_NODELAY on the connection: a publish leaves at once instead of waiting (Nagle)
    for the acknowledgement of the previous segment; paho does not set it."""
    inner = getattr(client, "_client", None)
    sock = inner.socket() if inner is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def release(client: aiomqtt.Client) -> None:
    """The uplink is done with this client: whatever ends its connection later (the broker
    stopping after a cancelled ``__aexit__``) is expected, so its disconnection future is
    consumed instead of being reported as "Future exception was never retrieved"."""
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
