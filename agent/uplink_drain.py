"""The drain of one uplink session: the stored backlog and every new stored message,
published in id order with at most ``window`` unacknowledged, the acknowledged prefix
marked sent.

Stored publishes go to paho directly (no task or future per message: aiomqtt's
``publish`` costs about as much as the MQTT work itself); their PUBACKs are taken from
paho's ``on_publish`` by mid, every other mid (status, live publishes) is passed on to
aiomqtt's handler.

An MQTT 5 PUBACK with a failure reason code (``classify``):

- permanent (not authorized, topic name invalid, payload format invalid): the message is
  recorded as refused in the store (``mark_refused``: kept, never deleted, out of the
  backlog until ``resend``), reported through ``on_refused``, and the stream moves on;
- transient (anything else, e.g. quota exceeded): the message stays unsent and its stream
  is held for a backoff (1 s doubling to 60 s) while the other streams go on; the held
  stream is published again from its first unsent message when the backoff ends.

A failing ``mark_sent`` (a full disk) does not make the drain publish the acknowledged
messages again: their ids stay in memory (``unmarked``), are skipped by the publisher and
marked again with the next marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import field
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as paho

from agent.jws import b64u_decode
from agent.outbox import Outbox, Outgoing
from agent.uplink_window import Window
from agent.uplink_wire import begin_burst, end_burst, fast_pubacks, slow_pubacks
from drivers.dataclass_lite import frozen, mutable

T = TypeVar("T")
log = logging.getLogger("agent.uplink")

# MQTT 5 reason codes (PUBACK) after which the same message would be refused again
PERMANENT_REFUSALS = {
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x99: "payload format invalid",
}
HOLD_BASE_S = 1.0
HOLD_CAP_S = 60.0
# acknowledged ids are written to the store (``mark_sent``) in batches of up to this many
# while publishes are in flight, and at once when none are (a commit per few PUBACKs cost
# more than the drain's own work)
MARK_BATCH = 256


class SessionLost(Exception):
    """A stored publish failed: the connection is not usable any more."""


@frozen
class Refusal:
    code: int
    reason: str
    permanent: bool


def classify(rc: Any) -> Refusal | None:
    """The refusal in a PUBACK's reason code (paho ``ReasonCode`` or int); None when the
    broker accepted the message (codes below 0x80, e.g. 0x10 "no matching subscribers")."""
    value = getattr(rc, "value", rc)
    try:
        code = int(value)
    except (TypeError, ValueError):
        return None
    if code < 0x80:
        return None
    name = PERMANENT_REFUSALS.get(code)
    if name is not None:
        return Refusal(code, name, True)
    text = str(rc) if not isinstance(rc, int) else f"reason code 0x{code:02x}"
    return Refusal(code, text, False)


def refusal_event_of(m: Outgoing, r: Refusal | None = None) -> dict[str, Any] | None:
    """The `message_refused` event for a refused stored message; None when the message is
    itself a `message_refused` event (a refused event topic must not make a loop)."""
    if m.stream == "event":
        try:
            env = json.loads(b64u_decode(m.payload.split(".")[1]))
            kind = env["body"]["kind"]
        except (ValueError, KeyError, IndexError, TypeError):
            kind = None
        if kind == "message_refused":
            return None
    ev: dict[str, Any] = {"kind": "message_refused", "stream": m.stream, "seq": m.seq}
    if r is not None:
        ev.update(topic=m.topic, code=r.code, reason=r.reason)
    return ev


def hold_delay(attempt: int) -> float:
    return float(min(HOLD_CAP_S, HOLD_BASE_S * 2.0 ** min(attempt, 30)))


@mutable
class StreamHold:
    """A stream held after a transient refusal: not published before ``until``."""

    until: float
    attempt: int = 0


@mutable
class Marks:
    """Acknowledged (``unmarked``) or refused (``unmarked_refused``) messages not yet written
    to the store: skipped by the publisher until written (kept across sessions, so a failing
    write on a full disk never makes them go out again)."""

    unmarked: set[int] = field(default_factory=set)
    unmarked_refused: dict[int, tuple[int, str]] = field(default_factory=dict)
    failures: int = 0

    def waiting(self) -> bool:
        return bool(self.unmarked or self.unmarked_refused)

    def skip(self, sid: int) -> bool:
        return sid in self.unmarked or sid in self.unmarked_refused


OnRefused = Callable[[Outgoing, Refusal], Coroutine[Any, Any, None]]


class DrainHost(Protocol):
    """What a drain uses of its uplink (``agent.uplink.Uplink``)."""

    store: Outbox
    clock: Callable[[], float]
    batch: int
    timeout_s: float
    on_refused: OnRefused | None
    background: set[asyncio.Task[None]]
    wake_event: asyncio.Event
    marks: Marks
    holds: dict[str, StreamHold]
    published: int
    inflight_peak: int
    last_publish: float | None

    async def db(self, fn: Callable[..., T], *args: Any) -> T: ...


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Drain:
    """One session's drain; ``run()`` until cancelled or the session is lost."""

    def __init__(self, up: DrainHost, inner: paho.Client, window: Window) -> None:
        self.up = up
        self.inner = inner
        self.original: Any = inner.on_publish
        self.loop = asyncio.get_running_loop()
        self.window = window
        # wait_slot's future and how many free slots end it (not woken for every PUBACK)
        self.waiter: asyncio.Future[None] | None = None
        self.want_free = 1
        self.refilling = False  # the waiter's wait lets ``refill`` publish
        self.refill_soon = False  # a ``refill`` is scheduled
        self.tick: asyncio.TimerHandle | None = None  # wakes the waiter for ``check``
        self.marks = up.marks  # survives the session: ids whose mark failed stay skipped
        self.marking: asyncio.Task[None] | None = None
        self.gathering: asyncio.Future[None] | None = None  # mark_loop waiting for a batch
        self.ending = False  # the session is over: mark what is waiting at once
        self.inflight: dict[int, Outgoing] = {}  # stored id -> message, until released
        self.refused_now: dict[int, Refusal] = {}  # stored id -> its refusal, until released
        self.holds = up.holds  # stream -> hold (survives the session)
        self.buf: deque[Outgoing] = deque()
        self.cursor = 0  # the last stored id read in this scan
        self.progress = False  # something was published since the scan started
        self.pending_fetch: asyncio.Future[Sequence[Outgoing]] | None = None
        self.fetch_limit = up.batch  # the limit of the last read

    # --- PUBACKs (paho's thread is the loop's: aiomqtt runs paho on the event loop) ------

    def on_publish(self, c: Any, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        if not self.window.owns(mid):
            if self.original is not None:
                self.original(c, userdata, mid, rc, props)
            return
        refusal = classify(rc) if getattr(rc, "is_failure", False) else None
        if refusal is not None:
            sid = self.window.sid_of(mid)
            if sid is not None:
                self.refused_now[sid] = refusal
        self.released(self.window.ack(mid))

    def released(self, ids: list[int]) -> None:
        """Ids acknowledged with every message published before them: mark them."""
        if ids:
            refused_now, inflight = self.refused_now, self.inflight
            if not refused_now:  # the usual case: all accepted
                for sid in ids:
                    inflight.pop(sid, None)
                self.marks.unmarked.update(ids)
            for sid in ids if refused_now else ():
                m = inflight.pop(sid, None)
                refusal = refused_now.pop(sid, None) if refused_now else None
                if refusal is None:
                    self.marks.unmarked.add(sid)
                elif refusal.permanent:
                    self.marks.unmarked_refused[sid] = (refusal.code, refusal.reason)
                    if m is not None:
                        self.report(m, refusal)
                elif m is not None:
                    self.hold(m, refusal)
            if self.marking is None or self.marking.done():
                if self.marks.waiting():
                    self.marking = self.loop.create_task(self.mark_loop())
            elif self.gathering is not None and not self.batch_pending():
                _wake(self.gathering)
        w = self.waiter
        if (
            w is not None
            and not w.done()
            and (self.window.size - len(self.window) >= self.want_free or self.refused_now)
        ):
            if self.refilling and not self.refused_now:
                if not self.refill_soon:  # publish from a plain callback: no task wakeup
                    self.refill_soon = True
                    self.loop.call_soon(self.refill)
            else:
                w.set_result(None)

    def refill(self) -> None:
        """The steady state of a long drain: the next burst published from a callback while
        the drain task keeps waiting (waking it for every burst cost as much as the burst's
        own bookkeeping). The task is woken when the buffer is empty, a refusal came, or
        this fails (the task raises the error)."""
        self.refill_soon = False
        w = self.waiter
        if w is None or w.done():
            return
        if not self.refilling or self.refused_now or not self.buf:
            w.set_result(None)
            return
        try:
            self.check()
            self.publish_some()
        except Exception as e:
            w.set_exception(e)
            return
        if not self.buf:
            w.set_result(None)

    def report(self, m: Outgoing, refusal: Refusal) -> None:
        log.warning(
            "uplink: broker refused %s seq %d on %s: %s (0x%02x); kept as refused, the"
            " stream goes on (cmd resend retries it)",
            *(m.stream, m.seq, m.topic, refusal.reason, refusal.code),
        )
        cb = self.up.on_refused
        if cb is not None:
            task = self.loop.create_task(cb(m, refusal))
            self.up.background.add(task)
            task.add_done_callback(self.up.background.discard)

    def hold(self, m: Outgoing, refusal: Refusal) -> None:
        h = self.holds.get(m.stream)
        attempt = 0 if h is None else h.attempt + 1
        delay = hold_delay(attempt)
        self.holds[m.stream] = StreamHold(time.monotonic() + delay, attempt)
        log.warning(
            "uplink: broker refused %s seq %d for now (%s); stream %s held %.0f s",
            *(m.stream, m.seq, refusal.reason, m.stream, delay),
        )

    def batch_pending(self) -> bool:
        """More acknowledgements are coming (in flight, or buffered to publish: the window
        runs empty between bursts) and the waiting ids are not a batch yet."""
        m = self.marks
        return (
            len(m.unmarked) < MARK_BATCH
            and not m.unmarked_refused
            and not self.ending
            and bool(self.buf or len(self.window))
        )

    async def gather(self) -> None:
        """Until the waiting ids make a batch or nothing is in flight (``released`` wakes
        this), at most min(1 s, timeout / 2)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.gathering = fut
        timer = self.loop.call_later(min(1.0, self.up.timeout_s / 2), _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self.gathering = None

    async def mark_loop(self) -> None:
        m = self.marks
        while m.waiting():
            if self.batch_pending():
                await self.gather()
            refused = [(i, c, r) for i, (c, r) in m.unmarked_refused.items()]
            ids = sorted(m.unmarked)
            try:
                if refused:
                    await self.up.db(self.up.store.mark_refused, refused)
                    for i, _c, _r in refused:
                        m.unmarked_refused.pop(i, None)
                if ids:
                    await self.up.db(self.up.store.mark_sent, ids)
                    m.unmarked.difference_update(ids)
            except Exception as e:  # a full disk: keep them in memory, never re-publish
                m.failures += 1
                if m.failures == 1 or m.failures % 100 == 0:
                    log.warning(
                        "uplink: marking %d messages failed (%s); kept in memory",
                        len(ids) + len(refused),
                        e,
                    )
                return
            m.failures = 0
            self.up.published += len(ids)

    # --- waiting ---------------------------------------------------------------------------

    def check(self) -> None:
        age = self.window.oldest_age(time.monotonic())
        if age is not None and age > self.up.timeout_s:
            log.warning("uplink: no PUBACK within %.0f s; reconnecting", self.up.timeout_s)
            raise SessionLost(f"no PUBACK within {self.up.timeout_s:.0f} s")

    def on_tick(self) -> None:
        """End the current wait, so ``check`` runs."""
        self.tick = None
        if self.waiter is not None:
            _wake(self.waiter)

    async def wait_slot(self, free: int = 1, refill: bool = False) -> None:
        """Until ``free`` slots of the window are free (or a refusal came), at most
        min(1 s, timeout / 2): a plain future, and a timer shared by the waits that begin
        before it fires (no task or timer per wait). ``refill``: meanwhile bursts are
        published from ``refill`` whenever ``free`` slots are free."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiter, self.want_free = fut, max(1, min(free, self.window.size))
        self.refilling = refill
        if self.tick is None:
            self.tick = self.loop.call_later(min(1.0, self.up.timeout_s / 2), self.on_tick)
        try:
            await fut
        finally:
            self.waiter = None
            self.refilling = False
        self.check()

    async def quiesce(self, limit: float | None) -> None:
        end = None if limit is None else time.monotonic() + limit
        while len(self.window) and (end is None or time.monotonic() < end):
            await self.wait_slot(self.window.size)
        if self.marking is not None and not self.marking.done():
            await asyncio.wait([self.marking], timeout=limit)

    async def idle(self) -> None:
        """Nothing to publish: wait for new messages, a hold to end, or 30 s; retry the
        marks that failed meanwhile."""
        now = time.monotonic()
        wait = 30.0
        for h in self.holds.values():
            wait = min(wait, max(0.05, h.until - now))
        if self.marks.waiting():
            wait = min(wait, 5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.up.wake_event.wait(), wait)
        if self.marks.waiting() and (self.marking is None or self.marking.done()):
            self.marking = self.loop.create_task(self.mark_loop())

    # --- reading and publishing -------------------------------------------------------------

    def fetch(self, after: int, limit: int = 0) -> asyncio.Future[Sequence[Outgoing]]:
        """Read up to ``limit`` (the uplink's batch) unsent messages after id ``after``."""
        self.up.wake_event.clear()
        self.fetch_limit = limit or self.up.batch
        store = self.up.store
        # the payloads ready as bytes when the store can (``Store.unsent_wire``)
        read: Callable[[int, int], Sequence[Outgoing]] = getattr(store, "unsent_wire", store.unsent)
        return asyncio.ensure_future(self.up.db(read, self.fetch_limit, after))

    def skip(self, m: Outgoing, now: float) -> bool:
        if self.marks.skip(m.id):
            return True
        if not self.holds:
            return False
        h = self.holds.get(m.stream)
        # once the hold is over the stream is tried again (its attempt count stays)
        return h is not None and now < h.until

    def publish_some(self) -> None:
        """Fill the window from the buffer; the burst's packets leave in one write."""
        now = time.monotonic()
        buf, window, inflight, publish = self.buf, self.window, self.inflight, self.inner.publish
        sent = 0
        burst = begin_burst(self.inner)
        try:
            while buf and len(window) < window.size:
                m = buf.popleft()
                if self.skip(m, now):
                    continue
                data = getattr(m, "data", None)
                if data is None:
                    data = m.payload.encode("ascii")
                info = publish(m.topic, data, qos=m.qos, retain=m.retain)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    raise SessionLost(f"publish failed: {paho.error_string(info.rc)}")
                inflight[m.id] = m
                sent += 1
                done = window.sent(m.id, info.mid, m.qos, now)
                if done:  # QoS 0: nothing to wait for
                    self.released(done)
        finally:
            if sent:
                self.progress = True
                self.up.inflight_peak = max(self.up.inflight_peak, window.peak)
                self.up.last_publish = self.up.clock()
            rc = end_burst(self.inner, burst)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise SessionLost(f"write failed: {paho.error_string(rc)}")

    async def next_batch(self) -> None:
        """Fill the buffer from the store; at the tail, settle and rescan or wait."""
        if self.pending_fetch is None:
            self.pending_fetch = self.fetch(self.cursor)
        batch = await self.pending_fetch
        self.pending_fetch = None
        if batch:
            self.buf.extend(batch)
            self.cursor = batch[-1].id
            if len(batch) >= self.fetch_limit:  # more behind it: fetch while publishing
                self.pending_fetch = self.fetch(self.cursor)
            return
        if self.cursor and self.progress:
            # tail reached: let in-flight settle, then rescan from the start
            # (``resend`` marks old messages unsent again, held streams come back)
            await self.quiesce(None)
        else:
            await self.idle()
        self.cursor = 0
        self.progress = False
        self.clear_ended_holds()

    def clear_ended_holds(self) -> None:
        """A held stream whose retry went through (nothing of it refused since) is free."""
        now = time.monotonic()
        for stream, h in list(self.holds.items()):
            if now >= h.until + hold_delay(h.attempt) + self.up.timeout_s:
                del self.holds[stream]

    async def run(self) -> None:
        self.inner.on_publish = self.on_publish
        fast = fast_pubacks(self.inner, self.window.owns)
        # a first read of two windows: publishing starts before a whole batch is decoded
        self.pending_fetch = self.fetch(0, min(self.up.batch, 2 * self.window.size))
        try:
            while True:
                self.check()
                if not self.buf:
                    await self.next_batch()
                    continue
                self.publish_some()
                if self.buf:  # refill in bursts of a quarter window: it never runs dry
                    await self.wait_slot(self.window.size // 4, refill=True)
        except asyncio.CancelledError:
            # stopping: if still connected, let what is in flight finish and record it
            if self.inner.is_connected():
                with contextlib.suppress(Exception):
                    await self.quiesce(3)
            raise
        finally:
            self.inner.on_publish = self.original
            slow_pubacks(self.inner, fast)
            if self.tick is not None:
                self.tick.cancel()
            self.ending = True
            if self.gathering is not None:
                _wake(self.gathering)
            if self.pending_fetch is not None:
                self.pending_fetch.cancel()
            if self.marking is not None and not self.marking.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self.marking), 2)
