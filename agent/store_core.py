"""The store's connection and plumbing: opening (WAL, migrations, the lookup caches), the
single-writer-thread check, transactions, close, and the ``meta`` table. ``agent.store.Store``
builds on it (see there for the schema and durability rules)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from agent import store_schema
from agent.store_schema import StoreError


class StoreCore:
    def __init__(
        self,
        path: Path | str,
        max_mb: float = 512.0,
        sample_retention_days: float = 14.0,
        clock: Callable[[], float] = time.time,
        *,
        readonly: bool = False,
    ) -> None:
        """Open (and create or migrate) the database; ``readonly``: for the tools (``status``,
        ``export``): opened read-only, never created, migrated or checkpointed; a missing
        file or a database newer than this agent is a ``StoreError``."""
        self.path = Path(path)
        self.max_mb = float(max_mb)
        self.retention_s = float(sample_retention_days) * 86400.0
        self.clock = clock
        self.readonly = readonly
        self._owner = threading.get_ident()
        if readonly:
            self.conn = self._open_readonly()
            c = self.conn
            self.schema_version = int(c.execute("PRAGMA user_version").fetchone()[0])
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            c = self.conn
            # a new database gets 2 KiB pages (an existing one keeps its own): every commit
            # writes each page it touches whole to the WAL, so for the agent's small
            # transactions (samples, seq blocks, records) the SD card sees about a third
            # fewer bytes than with 4 KiB pages, and three years of records take no more room
            c.execute("PRAGMA page_size=2048")
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL mode (got {mode})")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=OFF")
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA cache_size=-2000")  # 2 MB page cache: RSS on a small box
            self.schema_version = store_schema.migrate(c)
        self._zdict: dict[int, bytes] = {
            int(i): bytes(d) for i, d in c.execute("SELECT id, dict FROM zdicts")
        }
        self._headers: dict[str, int] = {}
        self._header_text: dict[int, str] = {}
        for i, b in c.execute("SELECT id, b64 FROM jws_headers"):
            self._headers[str(b)] = int(i)
            self._header_text[int(i)] = str(b)
        self._topics: dict[str, int] = {}
        self._topic_text: dict[int, str] = {}
        for i, t in c.execute("SELECT id, topic FROM topics"):
            self._topics[str(t)] = int(i)
            self._topic_text[int(i)] = str(t)
        self._shapes: dict[str, int] = {
            str(k): int(i) for i, k in c.execute("SELECT id, keys FROM shapes")
        }
        self._shape_sorted: dict[int, tuple[str, ...]] = {}  # shape id -> its keys, sorted
        # texts of interval records kept as fields (schema 3, ``agent.store_fields``)
        self._labels: dict[str, int] = {}
        self._label_text: dict[int, str] = {}
        self._json_text: dict[tuple[int, str], str] = {}  # (label, kind) -> its JSON text
        if self.schema_version >= 3:
            for i, t in c.execute("SELECT id, text FROM labels"):
                self._labels[str(t)] = int(i)
                self._label_text[int(i)] = str(t)
        # live streams: next seq to hand out and the durable reservation limit
        self._live: dict[str, tuple[int, int]] = {}
        self._tips: dict[str, tuple[int, str]] = {}  # chained stream -> (seq, chain hash)
        # lookups inserted by the open transaction: in the maps only once it commits
        self._staged: list[tuple[dict[Any, Any], Any, Any]] = []
        self._closed = False

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no database there (check storage.path)")
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
            )
            conn.execute("PRAGMA busy_timeout=30000")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the database: {e}") from e
        if version == 0:
            conn.close()
            raise StoreError(f"{self.path}: not an agent database (no schema)")
        if version > len(store_schema.MIGRATIONS):
            conn.close()
            raise StoreError(
                f"{self.path}: database schema version {version} is newer than this agent"
            )
        return conn

    def _stage(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        """Put ``key -> value`` into ``cache`` when the open transaction commits."""
        self._staged.append((cache, key, value))

    def _staged_get(self, cache: dict[Any, Any], key: Any) -> Any:
        v = cache.get(key)
        if v is None:
            for c, k, val in self._staged:
                if c is cache and k == key:
                    return val
        return v

    # --- plumbing -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
        if threading.get_ident() != self._owner:
            raise StoreError("Store used from a thread other than its single writer thread")

    @contextmanager
    def _txn(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable``: fsync the WAL at its commit."""
        c = self.conn
        if durable:
            c.execute("PRAGMA synchronous=FULL")
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (SQLITE_FULL): never hide the error
                if c.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                self._staged.clear()
                raise
            for cache, key, value in self._staged:
                cache[key] = value
            self._staged.clear()
        finally:
            if durable:
                c.execute("PRAGMA synchronous=NORMAL")

    def _zd(self) -> bytes:
        return self._zdict[1]

    def close(self) -> None:
        if self._closed:
            return
        self._check()
        if self.readonly:
            self.conn.close()
            self._closed = True
            return
        # live streams: give back the unused rest of each reserved block
        if self._live:
            try:
                with self._txn(durable=True) as c:
                    for stream, (nxt, _limit) in self._live.items():
                        c.execute("UPDATE seqs SET last = ? WHERE stream = ?", (nxt - 1, stream))
            except sqlite3.Error:  # a full disk: the reserved blocks stay (a gap, no reuse)
                pass
            self._live.clear()
        try:
            self.conn.execute("PRAGMA optimize")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        self._check()
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._check()
        with self._txn(durable=True) as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def next_boot(self) -> int:
        """1, 2, 3 ...: one more at every start, durable."""
        self._check()
        with self._txn(durable=True) as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            boot = (int(row[0]) if row else 0) + 1
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('boot', ?)", (str(boot),))
        return boot

    def boot(self) -> int:
        """The current boot count (0 before the first start)."""
        v = self.get_meta("boot")
        return int(v) if v else 0
