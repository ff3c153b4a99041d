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
   acknowledged (PUBACK; an MQTT 5 PUBACK with a failure reason code is a refusal: a
   permanent one is recorded on the message and the stream goes on, a transient one holds
   that stream for a backoff; see ``agent.uplink_drain``). Stored publishes go
   straight to aiomqtt's paho client and their PUBACKs are taken from paho's
   ``on_publish`` by packet id (half the CPU of ``aiomqtt.Client.publish`` per message);
   the next batch is read from the store (``unsent_wire``: payloads as bytes) while the
   current one is published; acknowledged ids are marked in batches of up to
   ``MARK_BATCH`` (256) while publishes are in flight, at once when none are (a crash
   publishes at most those again: at least once). A burst's packets leave in one write and
   paho's small reads come out of one ``recv`` (``agent.uplink_wire``). A PUBACK missing
   for ``timeout_s`` ends the session. The socket has TCP_NODELAY (no Nagle delay).
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
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho

from agent.jws import Signer, envelope
from agent.outbox import Outbox as Outbox
from agent.outbox import Outgoing as Outgoing
from agent.uplink_conn import (
    INBOX_SIZE,
    MAX_INBOUND_BYTES,
    BrokerAddress,
    backoff_cap_for,
    backoff_delay,
    connect,
    connect_properties,
    describe_error,
    no_delay,
    parse_url,
    payload_bytes,
    release,
    tls_context,
)
from agent.uplink_drain import Drain, Marks, OnRefused, SessionLost, StreamHold
from agent.uplink_window import Window
from agent.uplink_wire import buffered_reads, quiet_logging
from drivers.dataclass_lite import frozen

__all__ = [
    "BrokerAddress",
    "MqttSettings",
    "Outbox",
    "Outgoing",
    "Uplink",
    "Window",
    "backoff_cap_for",
    "backoff_delay",
    "connect",
    "describe_error",
    "no_delay",
    "parse_url",
    "tls_context",
]

log = logging.getLogger(__name__)
# aiomqtt and paho log through this one; aiomqtt warns "There are N pending publish calls"
# on every publish beyond 10 in flight, which a window of 32 does by design.
mqtt_log = logging.getLogger(f"{__name__}.mqtt")
mqtt_log.setLevel(logging.ERROR)

T = TypeVar("T")


@frozen
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
        backoff_cap: float = 1.5,
        backoff_cap_long: float = 30.0,
        long_outage_s: float = 600.0,
        batch: int = 500,
        timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        rng: Callable[[], float] = random.random,
        on_refused: OnRefused | None = None,
        on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
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
        self.backoff_cap_long = backoff_cap_long
        self.long_outage_s = long_outage_s
        self.batch = max(self.window, batch)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.rng = rng
        self.on_refused = on_refused  # a stored message refused for good (MQTT 5 PUBACK)
        self.on_event = on_event  # events of the uplink (subscription_refused)
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
        self.wake_event = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._reserved: tuple[int, str] | None = None  # (online seq, signed will)
        self._will: str | None = None  # the offline status of the live connection
        self._offline_done = False
        self._established_once = False
        self._last_logged: str | None = None
        self._session_start = 0.0
        self.marks = Marks()  # acknowledged ids whose mark failed survive the session
        self.holds: dict[str, StreamHold] = {}  # streams held after a transient refusal
        self.refused_subscriptions: dict[str, str] = {}  # topic -> reason (SUBACK)
        self.background: set[asyncio.Task[None]] = set()
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(INBOX_SIZE)
        self.inbound_oversized = 0  # subscribed messages over MAX_INBOUND_BYTES
        self.inbound_dropped = 0  # subscribed messages dropped: the inbox was full

    # --- helpers ------------------------------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
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
            online = await self.db(self.store.next_seq, "status")
            will_seq = await self.db(self.store.next_seq, "status")
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
            max_queued_incoming_messages=INBOX_SIZE,
            properties=connect_properties() if v5 else None,
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
        self.wake_event.set()

    async def run(self) -> None:
        """Connect and reconnect forever; cancel to stop (publishes offline if connected)."""
        self._run_task = asyncio.current_task()
        handler = asyncio.create_task(self._handle_loop(), name="uplink-handler")
        attempt = 0
        down_since = time.monotonic()  # the outage's start: the last lasting session's end
        try:
            while True:
                before = self.connects
                try:
                    await self._connection()
                except (aiomqtt.MqttError, SessionLost, OSError, ssl.SSLError, ValueError) as e:
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
                now = time.monotonic()
                if attempt == 0:
                    down_since = now
                cap = backoff_cap_for(
                    now - down_since, self.backoff_cap, self.backoff_cap_long, self.long_outage_s
                )
                delay = backoff_delay(attempt, self.rng(), self.backoff_base, cap)
                log.debug("uplink: reconnect in %.2f s", delay)
                await asyncio.sleep(delay)
        finally:
            self.connected = False
            handler.cancel()

    async def _connection(self) -> None:
        """One connection, until it is lost (raises then)."""
        online_seq, will = await self._reserve()
        client = self._make_client(will)
        await connect(client)
        no_delay(client)
        buffered_reads(client._client)
        quiet_logging(client._client, mqtt_log)
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
            release(client)
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
            self._suback(topic, await client.subscribe(topic, qos=1))
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

    def _suback(self, topic: str, codes: Any) -> None:
        """Check a SUBACK's reason codes (MQTT 5) or granted QoS (3.1.1: 0x80 = failure):
        a refused subscription is logged once and kept in ``refused_subscriptions``."""
        refused = [c for c in codes if int(getattr(c, "value", c)) >= 0x80]
        if not refused:
            if self.refused_subscriptions.pop(topic, None) is not None:
                log.info("uplink: subscription to %s accepted again", topic)
            return
        reason = str(refused[0])
        if self.refused_subscriptions.get(topic) != reason:
            log.error("uplink: the broker refused the subscription to %s: %s", topic, reason)
            if self.on_event is not None:
                ev = {"kind": "subscription_refused", "topic": topic, "reason": reason}
                task = asyncio.get_running_loop().create_task(self._emit(ev))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
        self.refused_subscriptions[topic] = reason

    async def _emit(self, ev: dict[str, Any]) -> None:
        assert self.on_event is not None
        try:
            await self.on_event(ev)
        except Exception as e:
            log.warning("uplink: event %s not stored: %s", ev.get("kind"), e)

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Queue subscribed messages for ``_handle_loop`` (bounded; a handler never runs on
        the receive path); also how a lost connection is noticed. An oversized payload is
        cut to ``MAX_INBOUND_BYTES + 1`` at once (the handler rejects it unparsed)."""
        async for m in client.messages:
            if self.on_message is None:
                continue
            raw = payload_bytes(m.payload)
            if len(raw) > MAX_INBOUND_BYTES:
                self.inbound_oversized += 1
                log.warning("uplink: %d-byte message on %s: too large", len(raw), m.topic)
                raw = raw[: MAX_INBOUND_BYTES + 1]
            try:
                self.inbox.put_nowait((str(m.topic), raw))
            except asyncio.QueueFull:
                self.inbound_dropped += 1
                log.warning("uplink: inbound queue full; message on %s dropped", m.topic)

    async def _handle_loop(self) -> None:
        """Run ``on_message`` for queued messages, one at a time, off the receive path."""
        while True:
            topic, raw = await self.inbox.get()
            if self.on_message is None:
                continue
            try:
                await self.on_message(topic, raw)
            except Exception:  # garbage on a subscribed topic never stops the uplink
                log.exception("uplink: handler failed for a message on %s", topic)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the stored backlog and every new stored message (``agent.uplink_drain``)."""
        await Drain(self, client._client, Window(self.window)).run()

    async def publish_live(
        self, stream: str, subtopic: str, body: Any, qos: int = 0, retain: bool = False
    ) -> bool:
        """Sign with the next seq of ``stream`` and publish to ``P/S/subtopic``; not stored.
        False (nothing published, no seq used) when offline or when the publish fails."""
        client = self._client
        if client is None or not self.connected:
            return False
        seq = await self.db(self.store.next_seq, stream)
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
                release(client)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2)
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as e:
            log.warning("uplink: offline status not published: %s", e)
