"""MQTT uplink: store-and-forward of stored streams, live publishes, signed status and will.

One ``Uplink`` owns one broker connection at a time (aiomqtt; MQTT 5 first, 3.1.1 when the
broker refuses 5). ``run()`` connects and reconnects forever with exponential backoff and
jitter; each connection:

1. reserves two ``status`` seqs from the store (N for ``online``, N+1 for the will) and
   pre-signs the will: a retained, QoS 1 ``offline`` status. A clean shutdown publishes
   that very will payload, so status seqs have no holes when the agent stops cleanly.
2. publishes the retained ``online`` status (seq N), subscribes,
3. drains the stored backlog (``store.unsent``, oldest id first = seq order per stream) with
   up to ``window`` QoS 1 publishes unacknowledged (``Window``, pure bookkeeping). Publishes
   are issued in id order on one connection (so the broker sees per-stream seq order) and
   a message is marked sent only when it and every message published before it were
   acknowledged (PUBACK; an MQTT 5 PUBACK with a failure reason code is not an
   acknowledgement: the session ends, the message stays unsent). Stored publishes go
   straight to aiomqtt's paho client and their PUBACKs are taken from paho's
   ``on_publish`` by packet id (half the CPU of ``aiomqtt.Client.publish`` per message);
   the next batch is read from the store while the current one is published; marks are
   batched into one ``mark_sent`` per completion burst. A PUBACK missing for
   ``timeout_s`` ends the session. The socket has TCP_NODELAY (no Nagle delay).
4. meanwhile delivers subscribed messages to ``on_message`` (exceptions there are logged,
   never fatal) and lets ``publish_live`` send non-stored messages (telemetry, acks,
   config/current), which are never queued: ``False`` when offline.

A lost connection ends the session; whatever was not marked sent is published again (the
stored bytes) on the next connection: delivery is at least once. The store is only ever
called through ``executor`` (its single writer thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho

from agent.jws import Signer, envelope

log = logging.getLogger(__name__)
# aiomqtt and paho log through this one; aiomqtt warns "There are N pending publish calls"
# on every publish beyond 10 in flight, which a window of 32 does by design.
mqtt_log = logging.getLogger(f"{__name__}.mqtt")
mqtt_log.setLevel(logging.ERROR)

T = TypeVar("T")


class Outgoing(Protocol):
    """One stored message (``agent.store.StoredMessage``)."""

    @property
    def id(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def payload(self) -> str: ...


class Outbox(Protocol):
    """What the uplink needs from ``agent.store.Store``."""

    def next_seq(self, stream: str) -> int: ...
    def unsent(self, limit: int, after_id: int = 0) -> Sequence[Outgoing]: ...
    def mark_sent(self, ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class MqttSettings:
    url: str
    topic_prefix: str
    site: str
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30


@dataclass(frozen=True)
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


def backoff_delay(attempt: int, rnd: float, base: float = 0.5, cap: float = 3.0) -> float:
    """Exponential backoff with equal jitter: in [d/2, d], d = min(cap, base * 2**attempt).

    The uplink's defaults (0.5 s, capped at 3 s) put the first attempt after a broker's
    return within 3 s, whatever the outage's length (the backlog target is 5 s); the
    jitter spreads a fleet's reconnects over 1.5..3 s."""
    d = min(cap, base * (2.0 ** min(attempt, 30)))
    return d * (0.5 + 0.5 * min(max(rnd, 0.0), 1.0))


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


def _payload_bytes(p: Any) -> bytes:
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


class Window:
    """In-flight bookkeeping of stored publishes (pure, no I/O): publish order, paho mid ->
    stored id, and the acknowledged prefix. ``len`` counts everything published and not yet
    released (acknowledged ones behind an unacknowledged one included), so at most ``size``
    messages are ever unacknowledged and unmarked."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.peak = 0
        self._order: deque[tuple[int, float]] = deque()  # (stored id, publish time)
        self._mids: dict[int, int] = {}  # mid -> stored id, awaiting PUBACK
        self._done: set[int] = set()  # stored ids acknowledged, not yet released

    def __len__(self) -> int:
        return len(self._order)

    def owns(self, mid: int) -> bool:
        return mid in self._mids

    def sent(self, sid: int, mid: int, qos: int, now: float) -> list[int]:
        """Record a publish; returns the ids released by it (QoS 0 needs no PUBACK)."""
        self._order.append((sid, now))
        self.peak = max(self.peak, len(self._order))
        if qos == 0:
            self._done.add(sid)
        else:
            self._mids[mid] = sid
        return self._release()

    def ack(self, mid: int) -> list[int]:
        """A PUBACK for ``mid``; returns the stored ids now acknowledged with every message
        published before them, in publish order."""
        sid = self._mids.pop(mid, None)
        if sid is not None:
            self._done.add(sid)
        return self._release()

    def oldest_age(self, now: float) -> float | None:
        """Seconds the oldest unacknowledged publish has waited, None when none waits."""
        if not self._order:
            return None
        sid, t0 = self._order[0]
        return None if sid in self._done else now - t0

    def _release(self) -> list[int]:
        out: list[int] = []
        while self._order and self._order[0][0] in self._done:
            sid, _ = self._order.popleft()
            self._done.discard(sid)
            out.append(sid)
        return out


def no_delay(client: aiomqtt.Client) -> None:
    """TCP_NODELAY on the connection: a publish leaves at once instead of waiting (Nagle)
    for the acknowledgement of the previous segment; paho does not set it."""
    inner = getattr(client, "_client", None)
    sock = inner.socket() if inner is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _SessionLost(Exception):
    """A stored publish failed: the connection is not usable any more."""


class Uplink:
    def __init__(
        self,
        settings: MqttSettings,
        signer: Signer,
        store: Outbox,
        executor: Executor,
        *,
        boot: int,
        on_message: Callable[[str, bytes], Awaitable[None]] | None = None,
        subscriptions: Sequence[str] = (),
        window: int = 32,
        clock: Callable[[], float] = time.time,
        backoff_base: float = 0.5,
        backoff_cap: float = 3.0,
        batch: int = 500,
        timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.addr = parse_url(settings.url)
        self.signer = signer
        self.store = store
        self.executor = executor
        self.boot = boot
        self.on_message = on_message
        self.subscriptions = tuple(subscriptions)
        self.window = max(1, window)
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch = max(self.window, batch)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.rng = rng
        self.base = f"{settings.topic_prefix}/{settings.site}"
        self.status_topic = f"{self.base}/status"
        self.client_id = settings.client_id or f"dh-agent-{settings.site}"
        # observable state
        self.connected = False
        self.last_publish: float | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.published = 0  # stored messages acknowledged by the broker
        self.inflight_peak = 0  # most stored publishes unacknowledged at once
        self.protocol = aiomqtt.ProtocolVersion.V5
        # internals
        self._wake = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._reserved: tuple[int, str] | None = None  # (online seq, signed will)
        self._will: str | None = None  # the offline status of the live connection
        self._offline_done = False
        self._established_once = False
        self._last_logged: str | None = None
        self._session_start = 0.0

    # --- helpers ------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def _sign(self, stream: str, seq: int, body: Any) -> str:
        return self.signer.sign(envelope(self.settings.site, stream, seq, None, self.clock(), body))

    def _status_body(self, state: str) -> dict[str, Any]:
        return {"state": state, "boot": self.boot, "client_id": self.client_id}

    async def _reserve(self) -> tuple[int, str]:
        """Seqs for (online, will) of the next connection, the will signed now. Kept across
        failed attempts, so refused connects do not burn status seqs."""
        if self._reserved is None:
            online = await self._db(self.store.next_seq, "status")
            will_seq = await self._db(self.store.next_seq, "status")
            self._reserved = (online, self._sign("status", will_seq, self._status_body("offline")))
        return self._reserved

    def _make_client(self, will: str | None) -> aiomqtt.Client:
        s, a = self.settings, self.addr
        ctx = tls_context(s.ca_file, s.cert_file, s.key_file) if a.tls else None
        v5 = self.protocol == aiomqtt.ProtocolVersion.V5
        return aiomqtt.Client(
            a.host,
            a.port,
            username=s.username if s.username is not None else a.username,
            password=s.password if s.password is not None else a.password,
            identifier=self.client_id,
            protocol=self.protocol,
            will=aiomqtt.Will(self.status_topic, will.encode("ascii"), 1, True)
            if will is not None
            else None,
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=s.keepalive_s,
            timeout=self.connect_timeout_s,  # for CONNECT; raised to timeout_s once connected
            max_inflight_messages=self.window,
            tls_context=ctx,
            logger=mqtt_log,
        )

    def _note_error(self, msg: str) -> None:
        self.last_error = msg
        if msg != self._last_logged:
            log.warning("uplink: %s", msg)
            self._last_logged = msg
        else:
            log.debug("uplink: %s", msg)

    def _maybe_fallback(self, e: BaseException) -> None:
        """MQTT 5 refused (or the connection closed before CONNACK) by a broker never reached
        yet: alternate between 5 and 3.1.1 until one is accepted, then keep that one."""
        if self._established_once:
            return
        rc = getattr(e, "rc", None)
        value = getattr(rc, "value", rc)
        text = str(e).lower()
        if value in (1, 132) or "timed out" in text or "before accept" in text:
            v5 = self.protocol == aiomqtt.ProtocolVersion.V5
            self.protocol = aiomqtt.ProtocolVersion.V311 if v5 else aiomqtt.ProtocolVersion.V5
            log.info("uplink: next attempt with MQTT %s", "3.1.1" if v5 else "5")

    # --- public API ---------------------------------------------------------------------

    def wake(self) -> None:
        """New stored messages are available (call on the event loop's thread)."""
        self._wake.set()

    async def run(self) -> None:
        """Connect and reconnect forever; cancel to stop (publishes offline if connected)."""
        self._run_task = asyncio.current_task()
        attempt = 0
        try:
            while True:
                before = self.connects
                try:
                    await self._connection()
                except (aiomqtt.MqttError, _SessionLost, OSError, ssl.SSLError, ValueError) as e:
                    self._note_error(describe_error(e, self.addr, self.settings.ca_file))
                    if self.connects == before:
                        self._maybe_fallback(e)
                except Exception as e:  # e.g. the store failing: log, back off, try again
                    log.exception("uplink: unexpected error")
                    self.last_error = f"{type(e).__name__}: {e}"
                if self._offline_done:
                    return
                # a session that lasted is a fresh start; one dropped at once (another client
                # with our id, a broker kicking us) backs off like a failed connect
                lasted = time.monotonic() - self._session_start > 10
                attempt = 0 if self.connects > before and lasted else attempt + 1
                delay = backoff_delay(attempt, self.rng(), self.backoff_base, self.backoff_cap)
                log.debug("uplink: reconnect in %.2f s", delay)
                await asyncio.sleep(delay)
        finally:
            self.connected = False

    async def _connection(self) -> None:
        """One connection, until it is lost (raises then)."""
        online_seq, will = await self._reserve()
        client = self._make_client(will)
        await connect(client)
        no_delay(client)
        client.timeout = self.timeout_s
        self._reserved = None
        self._established_once = True
        self._client, self._will = client, will
        self._session_start = time.monotonic()
        self.connects += 1
        self.last_error = None
        self._last_logged = None
        log.info(
            "uplink: connected to %s:%d (MQTT %s)",
            self.addr.host,
            self.addr.port,
            "5" if self.protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1",
        )
        try:
            await self._session(client, online_seq)
        except asyncio.CancelledError:
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._say_offline(client, will), 5)
            raise
        finally:
            self.connected = False
            self._client = None
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 3)

    async def _say_offline(self, client: aiomqtt.Client, will: str) -> None:
        await client.publish(self.status_topic, will.encode("ascii"), qos=1, retain=True)
        self._offline_done = True
        self.last_publish = self.clock()
        log.info("uplink: offline status published")

    async def _session(self, client: aiomqtt.Client, online_seq: int) -> None:
        online = self._sign("status", online_seq, self._status_body("online"))
        await client.publish(self.status_topic, online.encode("ascii"), qos=1, retain=True)
        self.last_publish = self.clock()
        for topic in self.subscriptions:
            await client.subscribe(topic, qos=1)
        self.connected = True
        drain = asyncio.create_task(self._drain(client), name="uplink-drain")
        recv = asyncio.create_task(self._receive(client), name="uplink-receive")
        tasks = {drain, recv}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        raise aiomqtt.MqttError("session ended")

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Deliver subscribed messages; also how a lost connection is noticed."""
        async for m in client.messages:
            if self.on_message is None:
                continue
            try:
                await self.on_message(str(m.topic), _payload_bytes(m.payload))
            except Exception:  # garbage on a subscribed topic never stops the uplink
                log.exception("uplink: handler failed for a message on %s", m.topic)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the backlog and every new stored message, in id order, at most ``window``
        unacknowledged at a time; mark the acknowledged prefix sent.

        Stored publishes go to paho directly (no task or future per message: aiomqtt's
        ``publish`` costs about as much as the MQTT work itself); their PUBACKs are taken
        from paho's ``on_publish`` by mid, every other mid (status, live publishes) is passed
        on to aiomqtt's handler."""
        inner: paho.Client = client._client
        original: Any = inner.on_publish
        loop = asyncio.get_running_loop()
        window = Window(self.window)
        slot = asyncio.Event()  # a PUBACK came, or a failure
        to_mark: list[int] = []
        marking: asyncio.Task[None] | None = None
        failed: list[str] = []

        async def mark_loop() -> None:
            while to_mark:
                ids = to_mark[:]
                del to_mark[:]
                try:
                    await self._db(self.store.mark_sent, ids)
                except Exception:  # they stay unsent and go out again: duplicates, no loss
                    log.exception("uplink: mark_sent failed for %d messages", len(ids))
                    continue
                self.published += len(ids)

        def acked(ids: list[int]) -> None:
            nonlocal marking
            if ids:
                to_mark.extend(ids)
                if marking is None or marking.done():
                    marking = loop.create_task(mark_loop())
            slot.set()

        def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
            if not window.owns(mid):
                if original is not None:
                    original(c, userdata, mid, rc, props)
                return
            if getattr(rc, "is_failure", False):
                # MQTT 5: the broker refused this message (e.g. not authorized): it stays
                # stored and unsent; the session ends and the next one tries again
                failed.append(f"broker refused message (PUBACK {rc})")
                slot.set()
                return
            acked(window.ack(mid))

        def check() -> None:
            if failed:
                raise _SessionLost(failed[0])
            age = window.oldest_age(time.monotonic())
            if age is not None and age > self.timeout_s:
                log.warning("uplink: no PUBACK within %.0f s; reconnecting", self.timeout_s)
                raise _SessionLost(f"no PUBACK within {self.timeout_s:.0f} s")

        async def wait_slot() -> None:
            slot.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wait(), min(1.0, self.timeout_s / 2))
            check()

        async def quiesce(limit: float | None) -> None:
            end = None if limit is None else time.monotonic() + limit
            while len(window) and (end is None or time.monotonic() < end):
                await wait_slot()
            if marking is not None and not marking.done():
                await asyncio.wait([marking], timeout=limit)

        def fetch(after: int) -> asyncio.Future[Sequence[Outgoing]]:
            self._wake.clear()
            return asyncio.ensure_future(self._db(self.store.unsent, self.batch, after))

        inner.on_publish = on_publish
        buf: deque[Outgoing] = deque()
        cursor = 0
        pending_fetch: asyncio.Future[Sequence[Outgoing]] | None = fetch(0)
        try:
            while True:
                check()
                if not buf:
                    if pending_fetch is None:
                        pending_fetch = fetch(cursor)
                    batch = await pending_fetch
                    pending_fetch = None
                    if batch:
                        buf.extend(batch)
                        cursor = batch[-1].id
                        if len(batch) >= self.batch:  # more behind it: fetch while publishing
                            pending_fetch = fetch(cursor)
                        continue
                    if cursor:
                        # tail reached: let in-flight settle, then rescan from the start
                        # (``resend`` marks old messages unsent again)
                        await quiesce(None)
                        cursor = 0
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 30)
                    continue
                while buf and len(window) < window.size:
                    m = buf.popleft()
                    info = inner.publish(
                        m.topic, m.payload.encode("ascii"), qos=m.qos, retain=m.retain
                    )
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        raise _SessionLost(f"publish failed: {paho.error_string(info.rc)}")
                    acked(window.sent(m.id, info.mid, m.qos, time.monotonic()))
                    self.inflight_peak = max(self.inflight_peak, window.peak)
                    self.last_publish = self.clock()
                if buf:
                    await wait_slot()
        except asyncio.CancelledError:
            # stopping: if still connected, let what is in flight finish and record it
            if inner.is_connected():
                with contextlib.suppress(Exception):
                    await quiesce(3)
            raise
        finally:
            inner.on_publish = original
            if pending_fetch is not None:
                pending_fetch.cancel()
            if marking is not None and not marking.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(marking), 2)

    async def publish_live(
        self, stream: str, subtopic: str, body: Any, qos: int = 0, retain: bool = False
    ) -> bool:
        """Sign with the next seq of ``stream`` and publish to ``P/S/subtopic``; not stored.
        False (nothing published, no seq used) when offline or when the publish fails."""
        client = self._client
        if client is None or not self.connected:
            return False
        seq = await self._db(self.store.next_seq, stream)
        try:
            payload = self._sign(stream, seq, body)
        except (ValueError, TypeError) as e:  # not JSON-serializable: a gap in this stream
            log.error("uplink: cannot sign %s seq %d: %s", stream, seq, e)
            return False
        try:
            await client.publish(
                f"{self.base}/{subtopic}", payload.encode("ascii"), qos=qos, retain=retain
            )
        except aiomqtt.MqttError as e:
            log.debug("uplink: live publish on %s failed: %s", subtopic, e)
            return False
        self.last_publish = self.clock()
        return True

    async def shutdown(self) -> None:
        """Stop ``run()`` if it runs (in-flight publishes finish, the offline status goes
        out), else connect once briefly to publish the offline status."""
        task = self._run_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task], timeout=8)
        if self._offline_done:
            return
        try:
            _, will = await self._reserve()
            client = self._make_client(will)
            client.timeout = 3
            await connect(client)
            try:
                await self._say_offline(client, will)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2)
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as e:
            log.warning("uplink: offline status not published: %s", e)
