"""The read side of the interval records in the local store (``agent.store``): record
bodies of a time range (streamed), the union of their keys and the record count. A base
class of ``Store``; the writes (``commit_intervals``) stay with the signed messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from agent.store_bulk import envelopes_of
from agent.store_codec import ceil_int, floor_int
from agent.store_core import StoreCore


class IntervalQueries(StoreCore):
    """Queries over ``intervals`` joined with their signed ``messages``."""

    def iter_intervals(
        self, start: float, end: float, device: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Record bodies whose period start lies in [start, end), by device then start;
        streamed (three years of records never sit in memory at once)."""
        self._check()
        sql = (
            "SELECT i.start, m.codec, m.payload FROM intervals i JOIN messages m ON m.id = i.msg"
            " WHERE i.start >= ? AND i.start < ?"
        )
        args: list[Any] = [floor_int(start), ceil_int(end)]
        if device is not None:
            sql += " AND i.device = ?"
            args.append(device)
        sql += " ORDER BY i.device, i.start"
        zd = self._zd()
        cur = self.conn.execute(sql, args)
        # in batches, decoded in bulk (agent.store_bulk); ``i.start`` is the record's start
        while rows := cur.fetchmany(512):
            keep = [(c, p) for s, c, p in rows if start <= s < end]
            for env in envelopes_of(keep, zd):
                body = env.get("body")
                if isinstance(body, dict):
                    yield body

    def intervals(
        self, start: float, end: float, device: str | None = None
    ) -> list[dict[str, Any]]:
        return list(self.iter_intervals(start, end, device))

    def interval_keys(self, start: float, end: float, device: str | None = None) -> list[str]:
        """The union of the record keys in the range, in first-seen order."""
        self._check()
        sql = (
            "SELECT s.keys FROM shapes s WHERE s.id IN (SELECT DISTINCT shape FROM intervals"
            " WHERE start >= ? AND start < ?"
        )
        args: list[Any] = [floor_int(start), ceil_int(end)]
        if device is not None:
            sql += " AND device = ?"
            args.append(device)
        sql += ") ORDER BY s.id"
        keys: dict[str, None] = {}
        for (k,) in self.conn.execute(sql, args):
            keys.update(dict.fromkeys(json.loads(k)))
        return list(keys)

    def interval_count(self) -> int:
        self._check()
        return int(self.conn.execute("SELECT count(*) FROM intervals").fetchone()[0])
