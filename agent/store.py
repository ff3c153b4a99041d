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

Durability: the connection runs ``synchronous=NORMAL`` (WAL: a commit survives a process
crash; a power cut may lose the last commits but never corrupts). Whatever is signed
(interval records, events, any stored message, seq reservations) is committed with
``synchronous=FULL`` for that transaction: SQLite fsyncs the WAL at that commit, so a
closed interval survives a power cut from the moment ``commit_intervals`` returns. Raw
samples and ``mark_sent`` stay on NORMAL (losing the last batch of raw samples or a sent
mark to a power cut costs a re-send, never a record).
"""

from __future__ import annotations

import binascii
import json
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.jws import CHAINED_STREAMS, b64u_decode, b64u_encode, chain_hash

if TYPE_CHECKING:  # imported where a migration runs: sqlite-utils costs ~4 MB of RSS
    import sqlite_utils

log = logging.getLogger("dh.store")

SignBody = Callable[[dict[str, Any], int, str | None], str]
SignSeq = Callable[[int, str | None], str]

SEQ_BLOCK = 64  # live-stream seqs reserved per durable write
CODEC_VERBATIM = 0  # payload column = the whole compact JWS as ASCII
CODEC_DEFLATE_DICT1 = 1  # payload = raw deflate of the envelope bytes, preset dictionary 1
SAMPLE_FORMAT = 1


@dataclass(frozen=True)
class SampleRow:
    device: str
    ts: float | None
    mono: float
    boot: int
    synced: bool
    ok: bool
    values: dict[str, float]
    flags: list[str]


@dataclass(frozen=True)
class StoredMessage:
    id: int
    stream: str
    seq: int
    topic: str
    qos: int
    retain: bool
    payload: str  # the compact JWS, byte-exact


class StoreError(RuntimeError):
    """The database cannot be used by this version of the agent, or was misused."""


# --- the preset compression dictionary (version 1) -----------------------------------------


def _zdict_v1() -> bytes:
    """Typical envelopes (sorted keys, compact, as ``agent.jws`` signs them): interval
    records of each role and a few events. Deflate finds the key names here, so a record
    costs little more than its numbers. Stored in the database at schema creation."""
    hm = {
        "cooling_avg_c": 0,
        "device": "hm1",
        "end": "2025-01-01T01:00:00Z",
        "energy_end_kwh": 0,
        "energy_kwh": 0,
        "energy_start_kwh": 0,
        "flags": ["interpolated", "partial", "limited", "meter_error", "clock_unsynced"],
        "flow_avg_m3h": 0,
        "flow_limit_m3h": 2.5,
        "flow_max_m3h": 0,
        "limit_exceeded": False,
        "period_s": 3600,
        "power_avg_kw": 0,
        "power_limit_kw": None,
        "power_max_kw": 0,
        "return_avg_c": 0,
        "role": "heat_meter",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
        "supply_avg_c": 0,
        "volume_end_m3": 0,
        "volume_m3": 0,
        "volume_start_m3": 0,
    }
    dp = {
        "device": "dp1",
        "dp_avg_kpa": 0,
        "dp_max_kpa": 0,
        "dp_min_kpa": 0,
        "end": "2025-01-01T01:00:00Z",
        "flags": ["no_data", "counter_reset"],
        "period_s": 3600,
        "role": "dp_sensor",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
    }
    act = {
        "device": "act1",
        "end": "2025-01-01T01:00:00Z",
        "flags": [],
        "limit_min_pct": 0,
        "period_s": 3600,
        "position_avg_pct": 0,
        "role": "actuator",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
    }
    ev = {
        "basis": "period",
        "device": "hm1",
        "duration_s": 0,
        "kind": "supply_temp_low_end",
        "period_start": "2025-01-01T00:00:00Z",
        "source": "limiter",
        "start": "2025-01-01T00:00:00Z",
        "threshold": 0,
        "time": "2025-01-01T00:00:00.000Z",
        "value": 0,
    }
    parts = []
    for stream, body in (("event", ev), ("interval", act), ("interval", dp), ("interval", hm)):
        env = {
            "body": body,
            "prev": "A" * 43,
            "seq": 1,
            "site": "sub-000123",
            "stream": stream,
            "ts": "2025-01-01T00:00:00.000Z",
            "v": 1,
        }
        parts.append(json.dumps(env, separators=(",", ":"), sort_keys=True))
    return "".join(parts).encode("utf-8")


ZDICT_V1 = _zdict_v1()


# --- schema migrations ------------------------------------------------------------------------


def _m1_base(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"key"})
    db.table("seqs").create({"stream": str, "last": int}, pk="stream", not_null={"stream", "last"})
    db.table("jws_headers").create({"id": int, "b64": str}, pk="id", not_null={"b64"})
    db.table("jws_headers").create_index(["b64"], unique=True)
    db.table("topics").create({"id": int, "topic": str}, pk="id", not_null={"topic"})
    db.table("topics").create_index(["topic"], unique=True)
    db.table("zdicts").create({"id": int, "dict": bytes}, pk="id", not_null={"dict"})
    db.table("zdicts").insert({"id": 1, "dict": ZDICT_V1})
    db.table("shapes").create({"id": int, "keys": str}, pk="id", not_null={"keys"})
    db.table("shapes").create_index(["keys"], unique=True)
    db.table("messages").create(
        {
            "id": int,
            "stream": str,
            "seq": int,
            "topic": int,
            "qos": int,
            "retain": int,
            "hdr": int,
            "codec": int,
            "payload": bytes,
            "sig": bytes,
            "sent": int,
        },
        pk="id",
        not_null={"stream", "seq", "topic", "qos", "retain", "hdr", "codec", "payload", "sent"},
        defaults={"sent": 0},
    )
    db.table("messages").create_index(["stream", "seq"], unique=True)
    db.execute("CREATE INDEX messages_unsent ON messages(id) WHERE sent = 0")
    # one row per record: the idempotency key; WITHOUT ROWID keeps it to one b-tree
    db.execute(
        "CREATE TABLE intervals (device TEXT NOT NULL, start INTEGER NOT NULL,"
        " msg INTEGER NOT NULL, shape INTEGER NOT NULL, PRIMARY KEY (device, start))"
        " WITHOUT ROWID"
    )
    db.table("agg_state").create({"device": str, "state": str}, pk="device", not_null={"state"})
    db.table("sample_blocks").create(
        {
            "id": int,
            "device": str,
            "ts_min": float,
            "ts_max": float,
            "n": int,
            "fmt": int,
            "data": bytes,
        },
        pk="id",
        not_null={"device", "n", "fmt", "data"},
    )
    db.table("sample_blocks").create_index(["device", "ts_max"])


Migration = Callable[["sqlite_utils.Database"], None]
MIGRATIONS: list[Migration] = [_m1_base]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> int:
    """Bring the database up to ``len(migrations)``; each step is one transaction. Returns
    the resulting version. A database newer than the code is refused (StoreError)."""
    steps = MIGRATIONS if migrations is None else migrations
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(steps):
        raise StoreError(
            f"database schema version {version} is newer than this agent ({len(steps)})"
        )
    if version == len(steps):
        return version
    import sqlite_utils  # only here: an up-to-date database never loads it

    db = sqlite_utils.Database(conn, execute_plugins=False)
    for i in range(version, len(steps)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            steps[i](db)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            if "meta" in db.table_names():
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(i + 1),),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(steps)


# --- compact JWS codec (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class PackedJws:
    header: str  # protected header segment (base64url), or "" for verbatim
    codec: int
    payload: bytes
    sig: bytes


def pack_jws(compact: str, zdict: bytes) -> PackedJws:
    """The compact form of a compact JWS; ``unpack_jws`` gives the very same string back
    (checked here: anything that would not round-trip is kept verbatim)."""
    parts = compact.split(".")
    if len(parts) == 3:
        try:
            raw_payload = b64u_decode(parts[1])
            sig = b64u_decode(parts[2])
        except (ValueError, binascii.Error):
            pass
        else:
            c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
            packed = PackedJws(
                parts[0], CODEC_DEFLATE_DICT1, c.compress(raw_payload) + c.flush(), sig
            )
            if (
                unpack_jws(packed.header, packed.codec, packed.payload, packed.sig, zdict)
                == compact
            ):
                return packed
    return PackedJws("", CODEC_VERBATIM, compact.encode("utf-8"), b"")


def _inflate(data: bytes, zdict: bytes) -> bytes:
    d = zlib.decompressobj(-15, zdict)
    return d.decompress(data) + d.flush()


def unpack_jws(header: str, codec: int, payload: bytes, sig: bytes, zdict: bytes) -> str:
    if codec == CODEC_VERBATIM:
        return payload.decode("utf-8")
    if codec == CODEC_DEFLATE_DICT1:
        return f"{header}.{b64u_encode(_inflate(payload, zdict))}.{b64u_encode(sig)}"
    raise StoreError(f"unknown message codec {codec}")


def envelope_of(header: str, codec: int, payload: bytes, zdict: bytes) -> dict[str, Any]:
    """The signed envelope (JWS payload) of a stored message, without rebuilding the JWS."""
    if codec == CODEC_VERBATIM:
        seg = payload.decode("utf-8").split(".")[1]
        env = json.loads(b64u_decode(seg))
    else:
        env = json.loads(_inflate(payload, zdict))
    if not isinstance(env, dict):
        raise StoreError("stored payload is not a JSON object")
    return env


def start_key(rec: dict[str, Any]) -> int:
    """The record's period start as integer Unix seconds (the ``intervals`` key)."""
    s = rec["start"]
    if isinstance(s, int | float):
        return int(s)
    return int(datetime.fromisoformat(str(s).replace("Z", "+00:00")).timestamp())


def encode_samples(rows: Sequence[SampleRow]) -> bytes:
    data = [[r.ts, r.mono, r.boot, int(r.synced), int(r.ok), r.values, list(r.flags)] for r in rows]
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode("utf-8"), 6)


def decode_samples(device: str, blob: bytes) -> list[SampleRow]:
    out: list[SampleRow] = []
    for ts, mono, boot, synced, ok, values, flags in json.loads(zlib.decompress(blob)):
        out.append(
            SampleRow(
                device=device,
                ts=ts,
                mono=mono,
                boot=boot,
                synced=bool(synced),
                ok=bool(ok),
                values={str(k): float(v) for k, v in values.items()},
                flags=[str(f) for f in flags],
            )
        )
    return out


# --- the store --------------------------------------------------------------------------------


class Store:
    def __init__(
        self,
        path: Path | str,
        max_mb: float = 512.0,
        sample_retention_days: float = 14.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_mb = float(max_mb)
        self.retention_s = float(sample_retention_days) * 86400.0
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = threading.get_ident()
        self.conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        c = self.conn
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot use WAL mode (got {mode})")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("PRAGMA busy_timeout=30000")
        c.execute("PRAGMA cache_size=-2000")  # 2 MB page cache (SQLite default): RSS on a small box
        self.schema_version = migrate(c)
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
        # live streams: next seq to hand out and the durable reservation limit
        self._live: dict[str, tuple[int, int]] = {}
        self._tips: dict[str, tuple[int, str]] = {}  # chained stream -> (seq, chain hash)
        self._closed = False

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
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        finally:
            if durable:
                c.execute("PRAGMA synchronous=NORMAL")

    def _zd(self) -> bytes:
        return self._zdict[1]

    def close(self) -> None:
        if self._closed:
            return
        self._check()
        # live streams: give back the unused rest of each reserved block
        if self._live:
            with self._txn(durable=True) as c:
                for stream, (nxt, _limit) in self._live.items():
                    c.execute("UPDATE seqs SET last = ? WHERE stream = ?", (nxt - 1, stream))
            self._live.clear()
        try:
            self.conn.execute("PRAGMA optimize")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()
        self._closed = True

    def __enter__(self) -> Store:
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
        nxt, limit = self._live.get(stream, (0, 0))
        if nxt == 0 or nxt > limit:
            with self._txn(durable=True) as c:
                last = self._last_seq(c, stream)
                nxt, limit = last + 1, last + SEQ_BLOCK
                c.execute(
                    "INSERT OR REPLACE INTO seqs(stream, last) VALUES (?, ?)", (stream, limit)
                )
        self._live[stream] = (nxt + 1, limit)
        return nxt

    # --- stored messages --------------------------------------------------------------------

    def _header_id(self, c: sqlite3.Connection, b64: str) -> int:
        i = self._headers.get(b64)
        if i is None:
            i = int(c.execute("INSERT INTO jws_headers(b64) VALUES (?)", (b64,)).lastrowid or 0)
            self._headers[b64] = i
            self._header_text[i] = b64
        return i

    def _topic_id(self, c: sqlite3.Connection, topic: str) -> int:
        i = self._topics.get(topic)
        if i is None:
            i = int(c.execute("INSERT INTO topics(topic) VALUES (?)", (topic,)).lastrowid or 0)
            self._topics[topic] = i
            self._topic_text[i] = topic
        return i

    def _shape_id(self, c: sqlite3.Connection, keys: list[str]) -> int:
        k = json.dumps(keys, separators=(",", ":"))
        i = self._shapes.get(k)
        if i is None:
            i = int(c.execute("INSERT INTO shapes(keys) VALUES (?)", (k,)).lastrowid or 0)
            self._shapes[k] = i
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
            "SELECT hdr, codec, payload, sig FROM messages WHERE stream = ? AND seq = ?",
            (stream, last),
        ).fetchone()
        if row is None:
            raise StoreError(f"stream {stream}: seq {last} is not stored")
        h = chain_hash(self._unpack(row[0], row[1], row[2], row[3]))
        self._tips[stream] = (last, h)
        return last, h

    def _unpack(self, hdr: int, codec: int, payload: bytes, sig: bytes | None) -> str:
        return unpack_jws(self._header_text.get(hdr, ""), codec, payload, sig or b"", self._zd())

    def _store(
        self,
        c: sqlite3.Connection,
        stream: str,
        topic: str,
        qos: int,
        retain: bool,
        make: SignSeq,
        tips: dict[str, tuple[int, str]],
    ) -> tuple[int, int]:
        """Inside a transaction: sign with the next seq and insert; (message id, seq)."""
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

                mid, seq = self._store(c, "interval", topic, 1, False, make, tips)
                c.execute(
                    "INSERT INTO intervals(device, start, msg, shape) VALUES (?, ?, ?, ?)",
                    (dev, start, mid, self._shape_id(c, list(rec))),
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
        for mid, stream, seq, topic, qos, retain, hdr, codec, payload, sig in self.conn.execute(
            "SELECT id, stream, seq, topic, qos, retain, hdr, codec, payload, sig FROM messages "
            + sql,
            args,
        ):
            out.append(
                StoredMessage(
                    id=mid,
                    stream=stream,
                    seq=seq,
                    topic=self._topic_text[topic],
                    qos=qos,
                    retain=bool(retain),
                    payload=self._unpack(hdr, codec, payload, sig),
                )
            )
        return out

    def unsent(self, limit: int, after_id: int = 0) -> list[StoredMessage]:
        """Stored messages not yet acknowledged by the broker, oldest id first."""
        self._check()
        return self._rows("WHERE sent = 0 AND id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def mark_sent(self, ids: Sequence[int]) -> None:
        self._check()
        if not ids:
            return
        with self._txn(durable=False) as c:
            c.executemany("UPDATE messages SET sent = 1 WHERE id = ?", [(int(i),) for i in ids])
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_publish', ?)",
                (repr(float(self.clock())),),
            )

    def mark_unsent(self, stream: str, from_seq: int, to_seq: int) -> int:
        """Queue stored messages again (``cmd resend``); returns how many are stored in the
        range (whether they were sent or still pending)."""
        self._check()
        with self._txn(durable=False) as c:
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

    def seq_status(self) -> dict[str, int]:
        """The last seq per stream (for live streams: the reserved limit)."""
        self._check()
        return {str(s): int(n) for s, n in self.conn.execute("SELECT stream, last FROM seqs")}

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

    # --- interval records -------------------------------------------------------------------

    def iter_intervals(
        self, start: float, end: float, device: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Record bodies whose period start lies in [start, end), by device then start;
        streamed (three years of records never sit in memory at once)."""
        self._check()
        sql = (
            "SELECT m.codec, m.payload FROM intervals i JOIN messages m ON m.id = i.msg"
            " WHERE i.start >= ? AND i.start < ?"
        )
        args: list[Any] = [_floor(start), _ceil(end)]
        if device is not None:
            sql += " AND i.device = ?"
            args.append(device)
        sql += " ORDER BY i.device, i.start"
        zd = self._zd()
        for codec, payload in self.conn.execute(sql, args):
            body = envelope_of("", codec, payload, zd)["body"]
            if isinstance(body, dict) and start <= start_key(body) < end:
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
        args: list[Any] = [_floor(start), _ceil(end)]
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

    # --- raw samples ------------------------------------------------------------------------

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


def _floor(x: float) -> int:
    i = int(x)
    return i - 1 if i > x else i


def _ceil(x: float) -> int:
    i = int(x)
    return i + 1 if i < x else i
