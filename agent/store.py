"""The local store: SQLite (WAL) for raw samples, interval records, events and the outbox.

One ``Store`` object, one connection, one writer thread: the agent creates it on its
``store`` executor thread and calls every method there (the CLI uses its main thread).
The connection is opened with ``check_same_thread=False`` (Python's own check would refuse a
connection handed between threads); instead every public method checks it runs on the
thread that opened the store, so a call from another thread fails loudly instead of racing.

Schema (versioned by ``PRAGMA user_version``, mirrored in ``meta.schema_version``;
``MIGRATIONS[i]`` brings a database from version i to i + 1, each in one transaction):

- ``meta(key, value)``: boot counter, last publish, command ids ...
- ``seqs(stream, last)``: the last seq handed out per stream. For stored streams it is
  written in the same transaction as the message. For live (not stored) streams
  ``next_seq`` reserves ``SEQ_BLOCK`` seqs at a time durably and hands them out from
  memory; a clean ``close`` writes back the exact last one, a crash skips at most the rest
  of a block (gaps are allowed on non-stored streams, reuse never happens).
- ``messages``: every stored signed message (``interval``, ``event``, or any stream given
  to ``append_message``), its topic/QoS/retain and whether the broker acknowledged it
  (``sent``; a partial index keeps the unsent ones cheap to find).
- ``intervals(device, start, msg, shape)``: one row per interval record, the key that makes
  ``commit_intervals`` idempotent; the body itself lives only in the signed message.
  ``shape`` points at ``shapes`` (the record's key list), so an export knows its CSV
  columns without decoding every record twice.
- ``interval_fields`` and ``labels`` (schema 3): an interval record's signed envelope in
  typed columns (``agent.store_fields``), for records stored since; see below.
- ``agg_state(device, state)``: the aggregator's state, saved with the records.
- ``sample_blocks``: raw samples, one zlib-compressed block per device per
  ``add_samples`` batch (SD-card wear: a 60 s batch of three devices is three rows and a
  few pages, not 180 rows and their index entries).

Compact, byte-exact JWS: a compact JWS is ``H.P.S`` (base64url, no padding, which has
exactly one encoding per byte string). A message is stored as the protected header
segment (a lookup in ``jws_headers``: one row per signing key), the decoded payload
(the envelope JSON) compressed with raw deflate and a preset dictionary of envelope key
names (the dictionary is stored in the database, ``zdicts``, so it can never drift), and
the 64 raw signature bytes. The compact string is rebuilt on read. Before a message is
stored its rebuilt form is compared with the signed string; anything that would not
round-trip exactly is stored verbatim (codec 0) instead.

Interval records (schema 3): an envelope stored by ``commit_intervals`` is kept as its
fields instead (codec 2, empty payload): one typed column per known record key plus the
envelope's site, ts, prev and v in ``interval_fields`` (keyed by the message id), the
header by id and the raw signature in ``messages`` as above. The payload is rebuilt with the
signer's serializer (compact JSON, sorted keys); a record is only kept so when the rebuilt
compact JWS equals the signed one, checked before it is stored; otherwise it is stored as
above. Rows stored before schema 3 keep their form and are read as before. Export and the
page read the columns without parsing JSON, and SQLite writes most export lines itself
(``IntervalQueries.iter_export``).

Durability: the connection runs ``synchronous=NORMAL`` (WAL: a commit survives a process
crash; a power cut may lose the last commits but never corrupts). Whatever is signed
(interval records, events, any stored message, seq reservations) is committed with
``synchronous=FULL`` for that transaction: SQLite fsyncs the WAL at that commit, so a
closed interval survives a power cut from the moment ``commit_intervals`` returns. Raw
samples and ``mark_sent`` stay on NORMAL (losing the last batch of raw samples or a sent
mark to a power cut costs a re-send, never a record).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from agent.jws import CHAINED_STREAMS, chain_hash
from agent.store_codec import (
    CODEC_DEFLATE_DICT1,
    CODEC_VERBATIM,
    SAMPLE_FORMAT,
    PackedJws,
    SampleRow,
    StoredMessage,
    decode_samples,
    encode_samples,
    envelope_of,
    pack_jws,
    start_key,
    unpack_jws,
)
from agent.store_intervals import CODEC_FIELDS, IntervalQueries
from agent.store_refusals import RefusalRecords
from agent.store_samples import SampleStore
from agent.store_schema import MIGRATIONS, Migration, StoreError, migrate
from agent.store_wire import Row, WireMessage, id_runs, wire_messages
from agent.store_zdict import ZDICT_V1

__all__ = [
    "CODEC_DEFLATE_DICT1",
    "CODEC_FIELDS",
    "CODEC_VERBATIM",
    "MIGRATIONS",
    "SAMPLE_FORMAT",
    "SEQ_BLOCK",
    "ZDICT_V1",
    "Migration",
    "PackedJws",
    "SampleRow",
    "SignBody",
    "SignSeq",
    "Store",
    "StoreError",
    "StoredMessage",
    "decode_samples",
    "encode_samples",
    "envelope_of",
    "migrate",
    "pack_jws",
    "start_key",
    "unpack_jws",
]

SignBody = Callable[[dict[str, Any], int, str | None], str]
SignSeq = Callable[[int, str | None], str]

SEQ_BLOCK = 64  # live-stream seqs reserved per durable write


class Store(IntervalQueries, SampleStore, RefusalRecords):
    """The agent's store: meta and raw samples (from the base classes), the interval-record
    queries (``agent.store_intervals``), seqs, stored signed messages and interval records."""

    # --- seqs -----------------------------------------------------------------------------

    def _last_seq(self, c: sqlite3.Connection, stream: str) -> int:
        row = c.execute("SELECT last FROM seqs WHERE stream = ?", (stream,)).fetchone()
        return int(row[0]) if row else 0

    def next_seq(self, stream: str) -> int:
        """Reserve the next seq of a live (not stored) stream: never reused, across restarts
        and crashes; a crash may skip a few (gaps are allowed on these streams)."""
        self._check()
        if stream in CHAINED_STREAMS:
            raise StoreError(f"{stream} seqs are assigned when a message is stored")
        self.reserve_live(stream)
        nxt, limit = self._live[stream]
        self._live[stream] = (nxt + 1, limit)
        return nxt

    def reserve_live(self, stream: str) -> None:
        """Make sure the next ``next_seq(stream)`` needs no disk write: a block of seqs is
        reserved now (durably) when none is left (the early opening does this for
        ``status``, off the first publish's path)."""
        self._check()
        nxt, limit = self._live.get(stream, (0, 0))
        if nxt == 0 or nxt > limit:
            with self._txn(durable=True) as c:
                last = self._last_seq(c, stream)
                nxt, limit = last + 1, last + SEQ_BLOCK
                c.execute(
                    "INSERT OR REPLACE INTO seqs(stream, last) VALUES (?, ?)", (stream, limit)
                )
            self._live[stream] = (nxt, limit)

    def raise_seq_floor(self, stream: str, last: int) -> None:
        """Live stream ``stream`` has handed out seqs up to ``last`` without the store
        (degraded mode): the next seq is above it (durable)."""
        self._check()
        with self._txn(durable=True) as c:
            floor = max(self._last_seq(c, stream), int(last))
            nxt, _limit = self._live.get(stream, (0, 0))
            floor = max(floor, nxt - 1)
            c.execute("INSERT OR REPLACE INTO seqs(stream, last) VALUES (?, ?)", (stream, floor))
        self._live.pop(stream, None)

    # --- stored messages --------------------------------------------------------------------

    # the lookup caches change only when the transaction commits (``_stage``): after a
    # rollback (a full disk) they never name a row that does not exist

    def _header_id(self, c: sqlite3.Connection, b64: str) -> int:
        i: int | None = self._staged_get(self._headers, b64)
        if i is None:
            i = int(c.execute("INSERT INTO jws_headers(b64) VALUES (?)", (b64,)).lastrowid or 0)
            self._stage(self._headers, b64, i)
            self._stage(self._header_text, i, b64)
        return i

    def _topic_id(self, c: sqlite3.Connection, topic: str) -> int:
        i: int | None = self._staged_get(self._topics, topic)
        if i is None:
            i = int(c.execute("INSERT INTO topics(topic) VALUES (?)", (topic,)).lastrowid or 0)
            self._stage(self._topics, topic, i)
            self._stage(self._topic_text, i, topic)
        return i

    def _tip(self, c: sqlite3.Connection, stream: str) -> tuple[int, str | None]:
        """(last seq, chain hash of that message or None) of a stored stream."""
        t = self._tips.get(stream)
        if t is not None:
            return t
        last = self._last_seq(c, stream)
        if last == 0:
            return 0, None
        row = c.execute(
            "SELECT id, hdr, codec, payload, sig FROM messages WHERE stream = ? AND seq = ?",
            (stream, last),
        ).fetchone()
        if row is None:
            raise StoreError(f"stream {stream}: seq {last} is not stored")
        h = chain_hash(self._unpack(row[0], stream, last, row[1], row[2], row[3], row[4]))
        self._tips[stream] = (last, h)
        return last, h

    def _unpack(
        self,
        mid: int,
        stream: str,
        seq: int,
        hdr: int,
        codec: int,
        payload: bytes,
        sig: bytes | None,
        fields: dict[int, dict[str, Any]] | None = None,
    ) -> str:
        header = self._header_text.get(hdr, "")
        if codec == CODEC_FIELDS and payload:  # not yet sent: its compressed payload
            return unpack_jws(header, CODEC_DEFLATE_DICT1, payload, sig or b"", self._zd())
        if codec == CODEC_FIELDS:
            row = (fields if fields is not None else self._fields_rows([mid])).get(mid)
            return self._compact_of_fields(header, stream, seq, sig or b"", row)
        return unpack_jws(header, codec, payload, sig or b"", self._zd())

    def _store(
        self,
        c: sqlite3.Connection,
        stream: str,
        topic: str,
        qos: int,
        retain: bool,
        make: SignSeq,
        tips: dict[str, tuple[int, str]],
        shape: int | None = None,
    ) -> tuple[int, int]:
        """Inside a transaction: sign with the next seq and insert; (message id, seq).
        ``shape`` (an interval record's key list): keep it as fields where byte-exact."""
        chained = stream in CHAINED_STREAMS
        if stream in tips:
            last, prev_h = tips[stream]
            prev: str | None = prev_h
        elif chained:
            last, prev = self._tip(c, stream)
        else:
            if stream in self._live:
                raise StoreError(f"{stream} is a live stream in this session")
            last, prev = self._last_seq(c, stream), None
        seq = last + 1
        compact = make(seq, prev if chained else None)
        if not isinstance(compact, str) or not compact.isascii():
            raise StoreError("a signed message must be an ASCII compact JWS")
        form = None
        if shape is not None and self.schema_version >= 3:
            form = self._fields_form(c, compact, stream, seq, shape)
        if form is not None:
            p = PackedJws(form[0], CODEC_FIELDS, b"", form[1])
        else:
            p = pack_jws(compact, self._zd())
        hdr = self._header_id(c, p.header) if p.codec != CODEC_VERBATIM else 0
        mid = int(
            c.execute(
                "INSERT INTO messages(stream, seq, topic, qos, retain, hdr, codec, payload, sig)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stream,
                    seq,
                    self._topic_id(c, topic),
                    int(qos),
                    int(retain),
                    hdr,
                    p.codec,
                    p.payload,
                    p.sig,
                ),
            ).lastrowid
            or 0
        )
        if form is not None:
            self._insert_fields(c, mid, form[2], form[3])
            # until the broker has it, the compressed payload too (``undelivered``): the
            # drain reads it as cheaply as a blob; ``mark_sent`` deletes it
            blob = pack_jws(compact, self._zd())
            if blob.codec == CODEC_DEFLATE_DICT1 and blob.header == p.header:
                c.execute(
                    "INSERT INTO undelivered(msg, payload) VALUES (?, ?)", (mid, blob.payload)
                )
        c.execute("INSERT OR REPLACE INTO seqs(stream, last) VALUES (?, ?)", (stream, seq))
        tips[stream] = (seq, chain_hash(compact))
        return mid, seq

    def _commit_tips(self, tips: dict[str, tuple[int, str]]) -> None:
        for s, t in tips.items():
            if s in CHAINED_STREAMS:
                self._tips[s] = t

    def append_message(self, stream: str, topic: str, qos: int, retain: bool, sign: SignSeq) -> int:
        """Store one signed message (durable); ``sign(seq, prev)`` makes it. Chained streams
        get ``prev`` = chain hash of the previous stored message (None for seq 1). Returns
        the seq."""
        self._check()
        tips: dict[str, tuple[int, str]] = {}
        with self._txn(durable=True) as c:
            _mid, seq = self._store(c, stream, topic, qos, retain, sign, tips)
        self._commit_tips(tips)
        return seq

    def add_event(self, body: dict[str, Any], topic: str, sign: SignBody) -> int:
        """Store one event (stream ``event``, chained, durable); returns its seq."""
        self._check()
        tips: dict[str, tuple[int, str]] = {}
        with self._txn(durable=True) as c:
            _mid, seq = self._store(
                c, "event", topic, 1, False, lambda s, p: sign(body, s, p), tips
            )
        self._commit_tips(tips)
        return seq

    def commit_intervals(
        self,
        device: str,
        state_json: str,
        records: Sequence[dict[str, Any]],
        topic: str,
        sign: SignBody,
    ) -> list[int]:
        """In ONE durable transaction: each record not stored yet (by device, start) is
        signed on the chained ``interval`` stream and stored, and the aggregator state is
        saved. Returns the seqs of the stored records (skipped ones have none)."""
        self._check()
        tips: dict[str, tuple[int, str]] = {}
        seqs: list[int] = []
        with self._txn(durable=True) as c:
            for rec in records:
                dev = str(rec.get("device", device))
                start = start_key(rec)
                if c.execute(
                    "SELECT 1 FROM intervals WHERE device = ? AND start = ?", (dev, start)
                ).fetchone():
                    continue

                def make(seq: int, prev: str | None, rec: dict[str, Any] = rec) -> str:
                    return sign(rec, seq, prev)

                shape = self._shape_id(c, list(rec))
                mid, seq = self._store(c, "interval", topic, 1, False, make, tips, shape)
                c.execute(
                    "INSERT INTO intervals(device, start, msg, shape) VALUES (?, ?, ?, ?)",
                    (dev, start, mid, shape),
                )
                seqs.append(seq)
            c.execute(
                "INSERT OR REPLACE INTO agg_state(device, state) VALUES (?, ?)",
                (device, state_json),
            )
        self._commit_tips(tips)
        return seqs

    def load_agg_state(self, device: str) -> str | None:
        self._check()
        row = self.conn.execute(
            "SELECT state FROM agg_state WHERE device = ?", (device,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _rows(self, sql: str, args: Sequence[Any]) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        rows = self.conn.execute(
            "SELECT id, stream, seq, topic, qos, retain, hdr, codec, "
            + self._payload_sql
            + " "
            + sql,
            args,
        ).fetchall()
        ids = [r[0] for r in rows if r[7] == CODEC_FIELDS and not r[8]]
        fields = self._fields_rows(ids) if ids else {}
        for mid, stream, seq, topic, qos, retain, hdr, codec, payload, sig in rows:
            out.append(
                StoredMessage(
                    id=mid,
                    stream=stream,
                    seq=seq,
                    topic=self._topic_text[topic],
                    qos=qos,
                    retain=bool(retain),
                    payload=self._unpack(mid, stream, seq, hdr, codec, payload, sig, fields),
                )
            )
        return out

    @property
    def _payload_sql(self) -> str:
        """The columns from ``payload, sig`` on, out of ``messages``: for a record kept as
        fields and not yet delivered, its compressed payload from ``undelivered``."""
        if self.schema_version < 3:
            return "payload, sig FROM messages"
        return (
            "coalesce(u.payload, messages.payload), sig FROM messages"
            " LEFT JOIN undelivered u ON u.msg = messages.id"
        )

    def unsent(self, limit: int, after_id: int = 0) -> list[StoredMessage]:
        """Stored messages not yet acknowledged by the broker, oldest id first."""
        self._check()
        return self._rows("WHERE sent = 0 AND id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def unsent_wire(self, limit: int, after_id: int = 0) -> list[WireMessage]:
        """``unsent`` with each payload as the bytes to publish (``agent.store_wire``)."""
        self._check()
        rows = self.conn.execute(
            "SELECT id, stream, seq, topic, qos, retain, hdr, codec, "
            + self._payload_sql
            + " WHERE sent = 0 AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        ids = [r[0] for r in rows if r[7] == CODEC_FIELDS and not r[8]]
        fields = self._fields_rows(ids) if ids else {}

        def rebuild(r: Row) -> bytes:  # an interval record kept as its fields only
            return self._unpack(r[0], r[1], r[2], r[6], r[7], r[8], r[9], fields).encode("ascii")

        zd = self._zd()
        return wire_messages(rows, self._topic_text, self._header_text, zd, CODEC_FIELDS, rebuild)

    def mark_sent(self, ids: Sequence[int]) -> None:
        self._check()
        if not ids:
            return
        # one statement per run of consecutive ids (the drain marks its acknowledged prefix:
        # usually one run per batch) instead of one per id
        runs = id_runs(ids)
        with self._txn(durable=False) as c:
            c.executemany("UPDATE messages SET sent = 1 WHERE id BETWEEN ? AND ?", runs)
            if self.schema_version >= 3:
                c.executemany("DELETE FROM undelivered WHERE msg BETWEEN ? AND ?", runs)
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_publish', ?)",
                (repr(float(self.clock())),),
            )

    def mark_unsent(self, stream: str, from_seq: int, to_seq: int) -> int:
        """Queue stored messages again (``cmd resend``; refused ones too); returns how many
        are stored in the range (whether they were sent, refused or still pending)."""
        self._check()
        with self._txn(durable=False) as c:
            c.execute(
                "DELETE FROM refusals WHERE msg IN (SELECT id FROM messages"
                " WHERE stream = ? AND seq BETWEEN ? AND ? AND sent = 2)",
                (stream, from_seq, to_seq),
            )
            c.execute(
                "UPDATE messages SET sent = 0 WHERE stream = ? AND seq BETWEEN ? AND ?",
                (stream, from_seq, to_seq),
            )
            n = c.execute(
                "SELECT count(*) FROM messages WHERE stream = ? AND seq BETWEEN ? AND ?",
                (stream, from_seq, to_seq),
            ).fetchone()[0]
        return int(n)

    def messages(self, stream: str, from_seq: int, to_seq: int) -> list[StoredMessage]:
        self._check()
        return self._rows(
            "WHERE stream = ? AND seq BETWEEN ? AND ? ORDER BY seq", (stream, from_seq, to_seq)
        )

    def backlog(self) -> dict[str, int]:
        """Unsent stored messages per stream."""
        self._check()
        return {
            str(s): int(n)
            for s, n in self.conn.execute(
                "SELECT stream, count(*) FROM messages WHERE sent = 0 GROUP BY stream"
            )
        }

    def last_publish(self) -> float | None:
        """Wall time of the last broker acknowledgement of a stored message."""
        v = self.get_meta("last_publish")
        return float(v) if v else None

    def event_bodies(self, from_seq: int = 1) -> list[dict[str, Any]]:
        """The bodies of the stored events from ``from_seq`` on, in seq order."""
        self._check()
        out: list[dict[str, Any]] = []
        for hdr, codec, payload in self.conn.execute(
            "SELECT hdr, codec, payload FROM messages WHERE stream = 'event' AND seq >= ?"
            " ORDER BY seq",
            (from_seq,),
        ):
            body = envelope_of(self._header_text.get(hdr, ""), codec, payload, self._zd()).get(
                "body"
            )
            if isinstance(body, dict):
                out.append(body)
        return out
