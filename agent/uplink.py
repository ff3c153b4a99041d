"""MQTT uplink: store-and-forward of stored streams, live publishes, signed status and will.

One ``Uplink`` owns one broker connection at a time (aiomqtt; MQTT 5 first, 3.1.1 when the
broker refuses 5). ``run()`` connects and reconnects forever with exponential backoff and
jitter; each connection:

1. reserves two ``status`` seqs from the store (N for ``online``, N+1 for the will) and
   pre-signs the will: a retained, QoS 1 ``offline`` status. A clean shutdown publishes
   that very will payload, so status seqs have no holes when the agent stops cleanly.
2. publishes the retained ``online`` status (seq N), subscribes,
3. drains the stored backlog (``store.unsent``, oldest id first = seq order per stream) with
   up to ``window`` QoS 1 publishes in flight. Publishes are issued in id order on one
   connection (so the broker sees per-stream seq order) and a message is marked sent only
   when it and every message published before it were acknowledged (PUBACK: aiomqtt's
   ``publish`` awaits the ``on_publish`` callback that paho calls on PUBACK for QoS 1).
   Marks are batched into one ``mark_sent`` per completion burst.
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
import math
import random
import ssl
import time
from collections import OrderedDict
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


def backoff_delay(attempt: int, rnd: float, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with equal jitter: in [d/2, d], d = min(cap, base * 2**attempt)."""
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
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
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
        """Publish the backlog and every new stored message, in id order, ``window`` at a
        time; mark the acknowledged prefix sent."""
        sem = asyncio.Semaphore(self.window)
        inflight: OrderedDict[int, asyncio.Task[None]] = OrderedDict()
        to_mark: list[int] = []
        marking: asyncio.Task[None] | None = None
        failed: list[BaseException] = []

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

        def settle() -> None:
            nonlocal marking
            while inflight:
                mid, task = next(iter(inflight.items()))
                if not task.done():
                    break
                if task.cancelled() or task.exception() is not None:
                    if not failed:
                        exc = None if task.cancelled() else task.exception()
                        failed.append(exc or aiomqtt.MqttError("no PUBACK (publish cancelled)"))
                    self._wake.set()
                    return
                inflight.popitem(last=False)
                to_mark.append(mid)
            if to_mark and (marking is None or marking.done()):
                marking = asyncio.create_task(mark_loop())

        started: dict[int, float] = {}

        async def publish(m: Outgoing) -> None:
            # timeout=inf: aiomqtt then awaits the PUBACK event directly instead of through
            # wait_for's extra task per message; ``watch`` below bounds the wait instead.
            try:
                await client.publish(
                    m.topic, m.payload.encode("ascii"), qos=m.qos, retain=m.retain, timeout=math.inf
                )
                self.last_publish = self.clock()
            except BaseException as e:  # recorded before the slot is freed: see check()
                if not failed:
                    bad = isinstance(e, asyncio.CancelledError)
                    failed.append(aiomqtt.MqttError("no PUBACK in time") if bad else e)
                self._wake.set()
                raise
            finally:
                started.pop(m.id, None)
                sem.release()

        async def watch() -> None:
            """A PUBACK that does not come within ``timeout_s`` fails the session."""
            while True:
                await asyncio.sleep(min(1.0, self.timeout_s / 2))
                if not inflight:
                    continue
                mid, task = next(iter(inflight.items()))
                t0 = started.get(mid)
                if t0 is not None and time.monotonic() - t0 > self.timeout_s and not task.done():
                    log.warning("uplink: no PUBACK within %.0f s; reconnecting", self.timeout_s)
                    task.cancel()

        def check() -> None:
            if failed:
                raise _SessionLost(f"publish failed: {failed[0]}")

        async def quiesce(timeout: float | None) -> None:
            if inflight:
                await asyncio.wait(list(inflight.values()), timeout=timeout)
            settle()
            if marking is not None:
                await asyncio.wait([marking], timeout=timeout)
            if to_mark:  # a mark task finished before the last settle
                await mark_loop()

        cursor = 0
        watcher = asyncio.create_task(watch())
        try:
            while True:
                check()
                self._wake.clear()
                batch = await self._db(self.store.unsent, self.batch, cursor)
                if not batch:
                    if cursor:
                        # tail reached: let in-flight settle, then rescan from the start
                        # (``resend`` marks old messages unsent again)
                        await quiesce(None)
                        check()
                        cursor = 0
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 30)
                    continue
                for m in batch:
                    await sem.acquire()
                    check()
                    started[m.id] = time.monotonic()
                    t = asyncio.create_task(publish(m))
                    inflight[m.id] = t
                    t.add_done_callback(lambda _t: settle())
                    cursor = m.id
        except asyncio.CancelledError:
            # stopping: let what is in flight finish, record it, then stop
            with contextlib.suppress(Exception):
                await quiesce(3)
            raise
        finally:
            watcher.cancel()
            for t in inflight.values():
                t.cancel()

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
