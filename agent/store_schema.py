"""The store's schema migrations: ``MIGRATIONS[i]`` brings a database from version i to
i + 1, each in one transaction; the version lives in ``PRAGMA user_version`` and is mirrored in
``meta.schema_version``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.store_zdict import ZDICT_V1

if TYPE_CHECKING:  # imported where a migration runs: sqlite-utils costs ~4 MB of RSS
    import sqlite_utils


class StoreError(RuntimeError):
    """The database cannot be used by this version of the agent, or was misused."""


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
    steps = MIGRATIONS if migrations is None else migrations  # read at call time
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
