"""Raw samples and the database's size: one compressed block per device per batch, the
retention and the size cap (``prune``). Part of ``agent.store.Store``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent.store_codec import SAMPLE_FORMAT, SampleRow, decode_samples, encode_samples
from agent.store_core import StoreCore

log = logging.getLogger("dh.store")


class SampleStore(StoreCore):
    def add_samples(self, rows: Sequence[SampleRow]) -> None:
        """One transaction per batch, one compressed block per device (not fsynced: raw
        samples behind a closed record are flushed just before it, in its commit's WAL)."""
        self._check()
        if not rows:
            return
        by_dev: dict[str, list[SampleRow]] = {}
        for r in rows:
            by_dev.setdefault(r.device, []).append(r)
        with self._txn(durable=False) as c:
            for dev, rs in by_dev.items():
                tss = [r.ts for r in rs if r.ts is not None]
                c.execute(
                    "INSERT INTO sample_blocks(device, ts_min, ts_max, n, fmt, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        dev,
                        min(tss) if tss else None,
                        max(tss) if tss else None,
                        len(rs),
                        SAMPLE_FORMAT,
                        encode_samples(rs),
                    ),
                )

    def samples_since(self, device: str, ts: float) -> list[SampleRow]:
        """The device's samples with a timestamp after ``ts``, in time order."""
        self._check()
        out: list[SampleRow] = []
        for (blob,) in self.conn.execute(
            "SELECT data FROM sample_blocks WHERE device = ? AND ts_max > ? ORDER BY id",
            (device, ts),
        ):
            out.extend(r for r in decode_samples(device, blob) if r.ts is not None and r.ts > ts)
        out.sort(key=lambda r: r.ts if r.ts is not None else 0.0)
        return out

    def last_samples(self) -> dict[str, SampleRow]:
        """The newest stored sample of each device."""
        self._check()
        out: dict[str, SampleRow] = {}
        for dev, blob in self.conn.execute(
            "SELECT device, data FROM sample_blocks WHERE id IN"
            " (SELECT max(id) FROM sample_blocks GROUP BY device)"
        ):
            rows = decode_samples(dev, blob)
            if rows:
                out[dev] = rows[-1]
        return out

    def sample_count(self) -> int:
        self._check()
        return int(self.conn.execute("SELECT coalesce(sum(n), 0) FROM sample_blocks").fetchone()[0])

    # --- size -----------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Pages in use (the database file minus its free list), in bytes."""
        self._check()
        c = self.conn
        pages = int(c.execute("PRAGMA page_count").fetchone()[0])
        free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * int(c.execute("PRAGMA page_size").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it."""
        self._check()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, now: float) -> dict[str, int]:
        """Drop raw samples older than the retention; then, while the database is over
        ``max_mb``, raw samples oldest first. Interval records, events and stored messages
        (sent or not) are never dropped, so the result only ever has ``samples``; when they
        alone exceed the cap, a warning is logged and the database grows (losing billing
        data silently is worse than a full card). Freed pages are reused by later inserts
        (no VACUUM: it would rewrite the whole file on the SD card)."""
        self._check()
        cutoff = now - self.retention_s
        dropped = 0
        with self._txn(durable=False) as c:
            keep_from = c.execute(
                "SELECT min(id) FROM sample_blocks WHERE ts_max >= ?", (cutoff,)
            ).fetchone()[0]
            where = "ts_max < ?"
            args: list[Any] = [cutoff]
            if keep_from is not None:  # blocks without timestamps age with their neighbours
                where += " OR (ts_max IS NULL AND id < ?)"
                args.append(keep_from)
            dropped += int(
                c.execute(
                    f"SELECT coalesce(sum(n), 0) FROM sample_blocks WHERE {where}", args
                ).fetchone()[0]
            )
            c.execute(f"DELETE FROM sample_blocks WHERE {where}", args)
        cap = int(self.max_mb * 1024 * 1024)
        over = self.size_bytes() - cap
        while over > 0:
            # free about the excess plus 10 % of the cap, oldest blocks first
            goal = over + cap // 10
            ids: list[int] = []
            n = 0
            got = 0
            for bid, bn, size in self.conn.execute(
                "SELECT id, n, length(data) + 64 FROM sample_blocks ORDER BY id"
            ):
                ids.append(int(bid))
                n += int(bn)
                got += int(size)
                if got >= goal:
                    break
            if not ids:
                break
            with self._txn(durable=False) as c:
                c.executemany("DELETE FROM sample_blocks WHERE id = ?", [(i,) for i in ids])
            dropped += n
            over = self.size_bytes() - cap
        if over > 0:
            log.warning(
                "store: %.1f MB over the %.0f MB cap with no raw samples left to prune;"
                " records and messages are kept",
                over / 1048576,
                self.max_mb,
            )
        return {"samples": dropped}
