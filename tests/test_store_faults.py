"""Issue 13 item 3 (and the storage part of item 2): the store under a real SQLITE_FULL,
made by a size-limited database (``PRAGMA max_page_count``) on the store's own connection."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer, envelope, verify
from agent.store import Store
from agent.timefmt import rfc3339
from tests.test_store import SIGNER, SITE, T0

NEW_SIGNER = Signer(Ed25519PrivateKey.generate())  # a rotated key: a new header row
KEYS = {SIGNER.kid: SIGNER.public_key, NEW_SIGNER.kid: NEW_SIGNER.public_key}


def sign_with(signer: Signer, stream: str) -> Any:
    def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
        return signer.sign(envelope(SITE, stream, seq, prev, time.time(), body))

    return sign


def fill_until_full(st: Store) -> tuple[int, str]:
    """Cap the file at its current size, then store events, each on a new topic and signed
    with a new key, until SQLite says the database is full. Returns (events stored, the
    topic of the event that failed)."""
    pages = int(st.conn.execute("PRAGMA page_count").fetchone()[0])
    st.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 600  # fills pages fast, so the failing statement is the message's insert
    for n in range(10_000):
        topic = f"p/s/event-{n}"
        try:
            st.add_event(
                {"kind": "test", "time": rfc3339(T0), "pad": big},
                topic,
                sign_with(NEW_SIGNER, "event"),
            )
        except sqlite3.OperationalError as e:
            assert "full" in str(e), e  # the real error, not "cannot rollback"
            return n, topic
    raise AssertionError("the database never filled up")


def test_a_full_database_leaves_the_caches_as_committed(tmp_path: Path) -> None:
    """After a transaction failed with SQLITE_FULL, the topic, header and shape ids it
    inserted are not in the store's caches: the next messages go on their own topics, and
    after a restart every stored message rebuilds byte-exact and verifies."""
    db = tmp_path / "agent.db"
    st = Store(db)
    st.add_event({"kind": "first", "time": rfc3339(T0)}, "p/s/event", sign_with(SIGNER, "event"))
    _, failed_topic = fill_until_full(st)
    st.conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    # a different topic first: it takes the row id the failed transaction had used
    st.append_message("telemetry", "p/s/other", 1, False, lambda s, p: SIGNER.sign(
        envelope(SITE, "telemetry", s, None, time.time(), {"n": s})
    ))  # fmt: skip
    seq = st.add_event(
        {"kind": "after", "time": rfc3339(T0)}, failed_topic, sign_with(NEW_SIGNER, "event")
    )
    mine = st.messages("event", seq, seq)
    assert [m.topic for m in mine] == [failed_topic], "the event went to another topic"
    st.close()
    st = Store(db)  # a restart: the caches are rebuilt from the database
    try:
        msgs = st.messages("event", 1, seq)
        assert [m.seq for m in msgs] == list(range(1, seq + 1))
        for m in msgs:
            verify(m.payload, KEYS)  # raises when a header was lost
        assert st.messages("event", seq, seq)[0].topic == failed_topic
    finally:
        st.close()


def test_a_failed_commit_reports_sqlite_full_not_a_rollback_error(tmp_path: Path) -> None:
    """SQLite rolls back by itself on SQLITE_FULL in some statements; the store's rollback
    must not replace the real error with 'cannot rollback - no transaction is active', and
    the store stays usable once space is back."""
    st = Store(tmp_path / "agent.db")
    try:
        pages = int(st.conn.execute("PRAGMA page_count").fetchone()[0])
        st.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(5000):
                st.set_meta(f"k{i}", "v" * 2000)
        st.conn.execute("PRAGMA max_page_count = 1073741823")
        st.set_meta("after", "ok")
        assert st.get_meta("after") == "ok"
    finally:
        st.close()
