"""The page's read-only view of the agent's store (SQLite, opened ``mode=ro``).

Never migrates, never writes: the connection is opened through a ``file:...?mode=ro`` URI
and ``PRAGMA query_only`` is set on top. Under the systemd unit the state folder is
mounted read-only: while the agent runs, SQLite reads its WAL through the existing
``-shm`` file; when the agent has stopped (no ``-wal``/``-shm`` left, none can be made)
the file is opened ``immutable=1`` for one query at a time.

The schema is the agent's (agent/store.py); messages are decoded here without importing
the store module (its sqlite-utils import would cost the page server memory at rest): a
stored message is either the compact JWS (codec 0), the raw-deflated envelope with the
store's preset dictionary (codec 1), or an interval record kept in typed columns (codec 2,
``interval_fields``, decoded by the pure ``agent.store_fields``).

All methods run on one thread (the server's ``db`` executor); none is called from the
event loop. A missing or unreadable database gives empty results, never an exception
through to a page.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent import store_fields as sf
from agent.timefmt import parse_time

CODEC_VERBATIM = 0
CODEC_DEFLATE_DICT1 = 1
CODEC_FIELDS = 2


def _ts(s: Any) -> float | None:
    if isinstance(s, int | float):
        return float(s)
    return parse_time(s)


def decode_envelope(codec: int, payload: bytes, zdict: bytes) -> dict[str, Any] | None:
    """The signed envelope of a stored message, or None when it cannot be decoded."""
    try:
        if codec == CODEC_VERBATIM:
            seg = payload.decode("ascii").split(".")[1]
            raw = base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
        elif codec == CODEC_DEFLATE_DICT1:
            d = zlib.decompressobj(-15, zdict)
            raw = d.decompress(payload) + d.flush()
        else:
            return None
        env = json.loads(raw)
    except (ValueError, IndexError, zlib.error, UnicodeDecodeError):
        return None
    return env if isinstance(env, dict) else None


class StoreReader:
    """Read-only queries for the pages. Reconnects when the database appears later."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.zdict = b""
        self.immutable = False
        self.fields = False  # the database has interval_fields (schema 3)
        self.labels: dict[int, str] = {}
        self.shapes: dict[int, tuple[str, ...]] = {}

    def _open(self) -> sqlite3.Connection | None:
        if self.conn is not None:
            return self.conn
        if not self.path.exists():
            return None
        base = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        for uri, immutable in ((base, False), (base + "&immutable=1", True)):
            try:
                c = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
                c.execute("PRAGMA query_only=ON")
                c.execute("PRAGMA cache_size=-1000")  # 1 MB: memory at rest on a small box
                row = c.execute("SELECT dict FROM zdicts WHERE id = 1").fetchone()
                fields = c.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'interval_fields'"
                ).fetchone()
            except sqlite3.Error:
                continue
            self.fields = fields is not None
            self.zdict = bytes(row[0]) if row else b""
            self.conn, self.immutable = c, immutable
            return c
        return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        c = self._open()
        if c is None:
            return []
        try:
            return list(c.execute(sql, args))
        except sqlite3.Error:
            self.close()  # e.g. the file was replaced: reopen on the next call
            return []
        finally:
            if self.immutable:  # a snapshot of a stopped agent's file: look again next time
                self.close()

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._rows("SELECT key, value FROM meta")}

    def backlog(self) -> dict[str, int]:
        sql = "SELECT stream, count(*) FROM messages WHERE sent = 0 GROUP BY stream"
        return {str(s): int(n) for s, n in self._rows(sql)}

    def _fields_body(self, row: tuple[Any, ...]) -> dict[str, Any] | None:
        """The body of a record kept as fields (None when it cannot be decoded)."""
        cols = dict(zip(sf.COLUMNS, row, strict=True))
        try:
            shape = int(cols["shape"])
            if shape not in self.shapes or any(
                type(cols[k]) is int and cols[k] not in self.labels for k in sf.LABEL_COLUMNS
            ):  # stored since the last look: read the lookups again
                self.shapes = {
                    int(i): tuple(sorted(json.loads(k)))
                    for i, k in self._rows("SELECT id, keys FROM shapes")
                }
                self.labels = {int(i): str(t) for i, t in self._rows("SELECT id, text FROM labels")}
            return sf.decode_body(cols, self.shapes[shape], self.labels.__getitem__)
        except (KeyError, ValueError, TypeError):
            return None

    def intervals(self, device: str, start: float, end: float) -> list[dict[str, Any]]:
        """Record bodies of one device with period start in [start, end), by start."""
        self._open()
        extra = f", {sf.SELECT_COLUMNS}" if self.fields else ""
        join = " LEFT JOIN interval_fields f ON f.msg = i.msg" if self.fields else ""
        sql = (
            f"SELECT m.codec, m.payload{extra} FROM intervals i JOIN messages m ON m.id = i.msg"
            f"{join} WHERE i.device = ? AND i.start >= ? AND i.start < ? ORDER BY i.start"
        )
        out = []
        for codec, payload, *fields in self._rows(sql, (device, int(start), int(end) + 1)):
            if codec == CODEC_FIELDS and fields:
                body = self._fields_body(tuple(fields))
            else:
                env = decode_envelope(int(codec), bytes(payload), self.zdict)
                body = env.get("body") if env else None
            t = _ts(body.get("start")) if isinstance(body, dict) else None
            if isinstance(body, dict) and t is not None and start <= t < end:
                out.append(body)
        return out

    def iter_intervals(self, device: str, start: float, end: float) -> Iterator[dict[str, Any]]:
        """Like ``intervals`` but a month at a time (a year never sits in memory)."""
        step = 31 * 86400.0
        t = start
        while t < end:
            yield from self.intervals(device, t, min(end, t + step))
            t += step

    def events(self, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Event bodies whose time is at or after ``since``, newest first (at most
        ``limit``; read backwards by seq, so old history is never scanned)."""
        sql = "SELECT codec, payload FROM messages WHERE stream = 'event' ORDER BY seq DESC LIMIT ?"
        out = []
        for codec, payload in self._rows(sql, (limit,)):
            env = decode_envelope(int(codec), bytes(payload), self.zdict)
            body = env.get("body") if env else None
            if not isinstance(body, dict):
                continue
            t = _ts(body.get("time"))
            if t is not None and t < since:
                break
            out.append(body)
        return out
