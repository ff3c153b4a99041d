"""Degraded storage mode: the agent keeps running when its database cannot be written (a
full disk) or opened (full, unreadable, corrupt).

Every store call of the service goes through ``StorageGuard.run``. A storage error (SQLite's
"database or disk is full", "disk I/O error", a corrupt file, an ``OSError``) does not
propagate: the guard enters degraded mode, the caller keeps its data in memory (events in
``StorageGuard.events``, raw samples in ``samples``, both bounded; interval records stay
as the aggregator's pending readings and are closed when the store takes them), and the
store is tried again every ``retry_s``. The condition is logged at once and then once a
minute, is in ``state`` (telemetry: ``storage``), and becomes a ``storage_degraded`` event
followed by ``storage_recovered`` once the store works again (both stored then: the event
stream lives in the store).

A database that cannot be opened is opened again at every retry. A corrupt one (SQLite:
"file is not a database", "database disk image is malformed") is renamed aside, never
deleted (``agent.db.corrupt-<UTC time>``, with its ``-wal`` and ``-shm``), and a new database
is made; a ``storage_replaced`` event names the kept file (the new database's streams start
again at seq 1).

Without a database at all, the uplink's live streams (telemetry, acks, status) take their
seqs from memory, starting at the wall clock's Unix seconds (``MemoryOutbox``), above any
seq reserved before (a jump, allowed on live streams); the store adopts them when it opens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agent.store import Store, StoredMessage
from drivers.dataclass_lite import mutable

log = logging.getLogger("dh.storage")
T = TypeVar("T")

MAX_EVENTS = 2000  # events kept in memory while the store is out (oldest dropped, counted)
MAX_SAMPLES = 20_000  # raw sample rows kept likewise
MAX_PENDING = 7_200  # readings per device kept for records the store has not taken yet


def is_storage_error(e: BaseException) -> bool:
    """The store cannot be used (disk full, I/O, corrupt, unreadable), as opposed to a bug."""
    if isinstance(e, sqlite3.OperationalError | OSError):
        return True
    return type(e) is sqlite3.DatabaseError  # corrupt file; not Integrity/Programming errors


def is_corrupt(e: BaseException) -> bool:
    return type(e) is sqlite3.DatabaseError


@mutable
class StorageState:
    """Pure bookkeeping of the degraded mode (times as arguments)."""

    active: bool = False
    since: float | None = None  # wall time the mode began
    since_mono: float = 0.0
    reason: str = ""
    failures: int = 0
    next_try: float = -math.inf  # monotonic
    last_log: float = -math.inf  # monotonic

    def may_try(self, mono: float) -> bool:
        return not self.active or mono >= self.next_try

    def fail(self, reason: str, wall: float, mono: float, retry_s: float) -> bool:
        """A storage error; True when it starts the degraded mode."""
        started = not self.active
        if started:
            self.active, self.since, self.since_mono = True, wall, mono
        self.reason = reason
        self.failures += 1
        self.next_try = mono + retry_s
        return started

    def recover(self, mono: float) -> float | None:
        """The store works; the seconds the degraded mode lasted, None when it was not on."""
        if not self.active:
            return None
        self.active = False
        self.failures = 0
        self.next_try = -math.inf
        return mono - self.since_mono

    def log_due(self, mono: float, every_s: float) -> bool:
        if mono - self.last_log >= every_s:
            self.last_log = mono
            return True
        return False

    def view(self) -> dict[str, Any]:
        return {"degraded": self.active, "since": self.since, "reason": self.reason}


def set_aside(path: Path, wall: float) -> Path:
    """Rename a corrupt database (and its -wal/-shm) aside; never deletes. The new name."""
    stamp = datetime.fromtimestamp(wall, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{dest}{suffix}"))
    return dest


Call = Callable[..., Awaitable[Any]]


class StorageGuard:
    def __init__(
        self,
        call: Call,
        opener: Callable[[], Store],
        path: Path,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        retry_s: float = 10.0,
        log_every_s: float = 60.0,
    ) -> None:
        self.call = call
        self.opener = opener
        self.path = path
        self.wall = wall
        self.mono = mono
        self.retry_s = retry_s
        self.log_every_s = log_every_s
        self.store: Store | None = None
        self.state = StorageState()
        self.events: deque[dict[str, Any]] = deque()
        self.events_lock = asyncio.Lock()  # one writer of ``events`` at a time
        self.samples: list[Any] = []
        self.dropped_events = 0
        self.dropped_samples = 0
        self.replaced: Path | None = None  # where a corrupt database was kept
        self.on_open: Callable[[Store], Awaitable[None]] | None = None
        self.recovered_after: float | None = None  # set on recovery, taken by the agent
        # an opening already under way on the store's thread (agent/store_early.py): the
        # first ``open`` takes its result, errors included
        self.first: Future[Store] | None = None

    async def open(self) -> bool:
        """Open the database (again); a corrupt one is set aside and a new one made."""
        first, self.first = self.first, None
        try:
            st = await (asyncio.wrap_future(first) if first else self.call(self.opener))
        except Exception as e:
            if not is_storage_error(e):
                raise
            if not is_corrupt(e):
                self.failed("open", e)
                return False
            kept = set_aside(self.path, self.wall())
            log.error(
                "storage: %s is corrupt (%s); kept as %s, starting a new one", self.path, e, kept
            )
            self.replaced = kept
            try:
                st = await self.call(self.opener)
            except Exception as e2:
                if not is_storage_error(e2):
                    raise
                self.failed("open", e2)
                return False
        self.store = st
        if self.on_open is not None:
            await self.on_open(st)
        return True

    async def run(self, what: str, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """``fn(store, *args)`` on the store's thread; (False, None) while degraded or on a storage
        error (which starts or continues the degraded mode)."""
        if not self.state.may_try(self.mono()):
            return False, None
        if self.store is None and not await self.open():
            return False, None
        st = self.store
        assert st is not None
        try:
            result = await self.call(fn, st, *args)
        except Exception as e:
            if not is_storage_error(e):
                raise
            self.failed(what, e)
            return False, None
        self.succeeded()
        return True, result

    def failed(self, what: str, e: BaseException) -> None:
        reason = f"{what}: {e}"
        if self.state.fail(reason, self.wall(), self.mono(), self.retry_s):
            log.error(
                "storage: %s; degraded mode: polling, limiter, monitors and telemetry go on,"
                " records and events are kept in memory until the store works again",
                reason,
            )
            self.state.last_log = self.mono()
            self.queue_event(
                {"kind": "storage_degraded", "reason": reason, "t": self.state.since}, front=True
            )
        elif self.state.log_due(self.mono(), self.log_every_s):
            log.warning(
                "storage: still degraded since %.0f s (%s); in memory: %d events, %d samples",
                self.mono() - self.state.since_mono,
                reason,
                len(self.events),
                len(self.samples),
            )

    def succeeded(self) -> None:
        lasted = self.state.recover(self.mono())
        if lasted is not None:
            log.warning("storage: works again after %.0f s; writing what was kept", lasted)
            self.recovered_after = lasted

    def queue_event(self, body: dict[str, Any], front: bool = False) -> None:
        if front:
            self.events.appendleft(body)
        else:
            self.events.append(body)
        while len(self.events) > MAX_EVENTS:
            self.events.popleft()
            self.dropped_events += 1

    def keep_samples(self, rows: Sequence[Any]) -> None:
        self.samples[:0] = rows
        over = len(self.samples) - MAX_SAMPLES
        if over > 0:
            del self.samples[:over]
            self.dropped_samples += over


def bound_pending(pending: list[Any], period_s: float, cap: int = MAX_PENDING) -> int:
    """Thin a device's pending readings (``.ts``, ``.flags``) in place to about ``cap``:
    each period keeps its first and last reading, its flagged ones and evenly spread others
    (energy and volume come from the meter's registers at the boundaries, so the records
    stay exact; averages rest on fewer readings). When even two per period are too many,
    the oldest periods go (the aggregator bridges them as a gap). Returns how many went."""
    if len(pending) <= cap:
        return 0
    groups: dict[int, list[Any]] = {}
    for s in pending:
        groups.setdefault(math.floor(s.ts / period_s), []).append(s)
    keys = sorted(groups)
    if 2 * len(keys) > cap:
        keys = keys[len(keys) - cap // 2 :]
    per = max(2, cap // max(1, len(keys)))
    kept: list[Any] = []
    for k in keys:
        g = groups[k]
        if len(g) <= per:
            kept.extend(g)
            continue
        step = (len(g) - 1) / (per - 1)
        pick = {round(i * step) for i in range(per)}
        kept.extend(s for i, s in enumerate(g) if i in pick or s.flags)
    dropped = len(pending) - len(kept)
    pending[:] = kept
    return dropped


class GuardedOutbox:
    """The uplink's view of the store through the guard: with no usable store, live seqs
    come from memory (wall-clock based, see the module's doc) and the backlog is empty."""

    def __init__(self, guard: StorageGuard) -> None:
        self.guard = guard
        self.lock = threading.Lock()
        self.mem: dict[str, int] = {}  # live stream -> last seq handed out from memory
        self._last_log = -math.inf

    def _note(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log >= 60:
            self._last_log = now
            log.warning("storage: %s failed for the uplink: %s", what, e)

    def next_seq(self, stream: str) -> int:
        st = self.guard.store
        with self.lock:
            if st is not None:
                try:
                    floor = self.mem.get(stream)
                    if floor is not None:  # seqs handed out from memory: stay above them
                        st.raise_seq_floor(stream, floor)
                        del self.mem[stream]
                    return st.next_seq(stream)
                except Exception as e:
                    if not is_storage_error(e):
                        raise
                    self._note("next_seq", e)
            n = max(self.mem.get(stream, 0) + 1, int(time.time()))
            self.mem[stream] = n
            return n

    def unsent(self, limit: int, after_id: int = 0) -> Sequence[StoredMessage]:
        st = self.guard.store
        if st is None:
            return []
        try:
            return st.unsent(limit, after_id)
        except Exception as e:
            if not is_storage_error(e):
                raise
            self._note("unsent", e)
            return []

    def mark_sent(self, ids: Sequence[int]) -> None:
        st = self.guard.store
        if st is None:
            raise sqlite3.OperationalError("no database")
        st.mark_sent(ids)

    def mark_refused(self, items: Sequence[tuple[int, int, str]]) -> None:
        st = self.guard.store
        if st is None:
            raise sqlite3.OperationalError("no database")
        st.mark_refused(items)
