"""The store's schema migrations: ``MIGRATIONS[i]`` brings a database from version i to
i + 1, each in one transaction; the version lives in ``PRAGMA user_version`` and is mirrored in
``meta.schema_version``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from agent.store_fields import CREATE_SQL as FIELDS_SQL
from agent.store_zdict import ZDICT_V1

if TYPE_CHECKING:  # imported where a migration runs: sqlite-utils costs ~4 MB of RSS
    import sqlite_utils


class StoreError(RuntimeError):
    """The database cannot be used by this version of the agent, or was misused."""


# The base schema as SQL, exactly as sqlite-utils 3.x wrote it for the first databases (so
# every database has the same schema text): a fresh install creates its database without
# loading sqlite-utils (~4 MB of RSS and ~60 ms before the first publish). Later migrations
# may use the sqlite-utils ``Database`` they are given; it is only created when one runs.
_M1_SQL = (
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY NOT NULL,\n   "value" TEXT\n)',
    'CREATE TABLE "seqs" (\n   "stream" TEXT PRIMARY KEY NOT NULL,\n   "last" INTEGER NOT NULL\n)',
    'CREATE TABLE "jws_headers" (\n   "id" INTEGER PRIMARY KEY,\n   "b64" TEXT NOT NULL\n)',
    'CREATE UNIQUE INDEX "idx_jws_headers_b64"\n    ON "jws_headers" ("b64")',
    'CREATE TABLE "topics" (\n   "id" INTEGER PRIMARY KEY,\n   "topic" TEXT NOT NULL\n)',
    'CREATE UNIQUE INDEX "idx_topics_topic"\n    ON "topics" ("topic")',
    'CREATE TABLE "zdicts" (\n   "id" INTEGER PRIMARY KEY,\n   "dict" BLOB NOT NULL\n)',
    'CREATE TABLE "shapes" (\n   "id" INTEGER PRIMARY KEY,\n   "keys" TEXT NOT NULL\n)',
    'CREATE UNIQUE INDEX "idx_shapes_keys"\n    ON "shapes" ("keys")',
    'CREATE TABLE "messages" (\n   "id" INTEGER PRIMARY KEY,\n   "stream" TEXT NOT NULL,\n'
    '   "seq" INTEGER NOT NULL,\n   "topic" INTEGER NOT NULL,\n   "qos" INTEGER NOT NULL,\n'
    '   "retain" INTEGER NOT NULL,\n   "hdr" INTEGER NOT NULL,\n   "codec" INTEGER NOT NULL,\n'
    '   "payload" BLOB NOT NULL,\n   "sig" BLOB,\n   "sent" INTEGER NOT NULL DEFAULT 0\n)',
    'CREATE UNIQUE INDEX "idx_messages_stream_seq"\n    ON "messages" ("stream", "seq")',
    "CREATE INDEX messages_unsent ON messages(id) WHERE sent = 0",
    # one row per record: the idempotency key; WITHOUT ROWID keeps it to one b-tree
    "CREATE TABLE intervals (device TEXT NOT NULL, start INTEGER NOT NULL,"
    " msg INTEGER NOT NULL, shape INTEGER NOT NULL, PRIMARY KEY (device, start))"
    " WITHOUT ROWID",
    'CREATE TABLE "agg_state" (\n   "device" TEXT PRIMARY KEY,\n   "state" TEXT NOT NULL\n)',
    'CREATE TABLE "sample_blocks" (\n   "id" INTEGER PRIMARY KEY,\n   "device" TEXT NOT NULL,\n'
    '   "ts_min" REAL,\n   "ts_max" REAL,\n   "n" INTEGER NOT NULL,\n   "fmt" INTEGER NOT NULL,\n'
    '   "data" BLOB NOT NULL\n)',
    'CREATE INDEX "idx_sample_blocks_device_ts_max"\n    ON "sample_blocks" ("device", "ts_max")',
)


def _m1_base(db: sqlite_utils.Database) -> None:
    for sql in _M1_SQL:
        db.conn.execute(sql)
    db.conn.execute("INSERT INTO zdicts(id, dict) VALUES (1, ?)", (ZDICT_V1,))


def _m2_refusals(db: sqlite_utils.Database) -> None:
    """Messages the broker refused for good (MQTT 5 PUBACK reason code): the message keeps
    ``sent = 2`` (out of the backlog, kept), this table says why and when."""
    db.conn.execute(
        "CREATE TABLE refusals (msg INTEGER PRIMARY KEY, code INTEGER NOT NULL,"
        " reason TEXT NOT NULL, time REAL NOT NULL)"
    )


def _m3_fields(db: sqlite_utils.Database) -> None:
    """Interval records in typed columns (``agent.store_fields``): ``labels`` (texts by id)
    and ``interval_fields`` (one row per record kept in that form, keyed by its message).
    Rows stored before keep their payload blob and are read as before."""
    for sql in FIELDS_SQL:
        db.conn.execute(sql)


class _LazyDatabase:
    """Stands in for ``sqlite_utils.Database`` in ``migrate``: ``conn`` is the connection;
    any other attribute creates the real sqlite-utils object (importing it) first."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._db: sqlite_utils.Database | None = None

    def __getattr__(self, name: str) -> object:
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn, execute_plugins=False)
        return getattr(self._db, name)


Migration = Callable[["sqlite_utils.Database"], None]
MIGRATIONS: list[Migration] = [_m1_base, _m2_refusals, _m3_fields]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> int:
    """Bring the database up to ``len(migrations)``; each step is one transaction. Returns
    the resulting version. A database newer than the code is refused (StoreError)."""
    steps = MIGRATIONS if migrations is None else migrations  # read at call time
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(steps):
        raise StoreError(
            f"database schema version {version} is newer than this agent ({len(steps)})"
        )
    db = cast("sqlite_utils.Database", _LazyDatabase(conn))
    for i in range(version, len(steps)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another connection may have made this step since the version was read (a
            # tool or test opening the file while the agent creates it): read it again
            # under the write lock, so a step never runs twice
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) > i:
                conn.execute("COMMIT")
                continue
            steps[i](db)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(i + 1),),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(steps)
