"""The SQLite store: schema migrations, boot and seq counters, chained signed messages
stored compactly and byte-exact, idempotent interval commits, the outbox, raw samples,
pruning, the single-writer guard, and SIGKILL in the middle of commits."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.store as store_mod
import agent.store_schema as schema_mod
from agent.jws import Signer, chain_hash, envelope, verify
from agent.store import (
    CODEC_DEFLATE_DICT1,
    CODEC_VERBATIM,
    ZDICT_V1,
    SampleRow,
    SignBody,
    Store,
    StoreError,
    pack_jws,
    unpack_jws,
)
from agent.timefmt import rfc3339

ROOT = Path(__file__).resolve().parents[1]
SITE = "site-1"
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
SIGNER = Signer(Ed25519PrivateKey.generate())
KEYS = {SIGNER.kid: SIGNER.public_key}


def record(device: str, i: int, role: str = "heat_meter", period: int = 3600) -> dict[str, Any]:
    start = T0 + i * period
    rec: dict[str, Any] = {
        "device": device,
        "role": role,
        "start": rfc3339(start),
        "end": rfc3339(start + period),
        "period_s": period,
        "samples": 3600,
        "flags": ["interpolated"] if i % 3 == 0 else [],
    }
    if role == "heat_meter":
        rec |= {
            "energy_start_kwh": 1000.0 + 12.5 * i,
            "energy_end_kwh": 1000.0 + 12.5 * (i + 1),
            "energy_kwh": 12.5,
            "flow_avg_m3h": 0.321,
            "limit_exceeded": False,
            "flow_limit_m3h": None,
        }
    else:
        rec |= {"dp_min_kpa": 61.5, "dp_avg_kpa": 80.25, "dp_max_kpa": 99.0}
    return rec


def signer_for(stream: str) -> SignBody:
    def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
        return SIGNER.sign(envelope(SITE, stream, seq, prev, time.time(), body))

    return sign


def commit(st: Store, device: str, idx: range, state: str = "{}") -> list[int]:
    recs = [record(device, i) for i in idx]
    return st.commit_intervals(device, state, recs, "p/s/interval", signer_for("interval"))


def event(st: Store, kind: str, **kw: Any) -> int:
    return st.add_event({"kind": kind, "time": rfc3339(T0), **kw}, "p/s/event", signer_for("event"))


def check_chain(msgs: list[Any], stream: str) -> list[dict[str, Any]]:
    """seq 1..N, each verifying and chained to the previous; the envelopes."""
    assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
    prev = None
    out = []
    for m in msgs:
        env = verify(m.payload, KEYS)
        assert (env["stream"], env["seq"]) == (stream, m.seq)
        assert env["prev"] == (chain_hash(prev) if prev is not None else None)
        prev = m.payload
        out.append(env)
    return out


# --- schema ---------------------------------------------------------------------------------


def test_fresh_database_is_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    st = Store(tmp_path / "sub" / "dir" / "agent.db")  # parent folders are created
    try:
        assert st.schema_version == len(store_mod.MIGRATIONS)
        assert st.get_meta("schema_version") == str(len(store_mod.MIGRATIONS))
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert st.conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    finally:
        st.close()


def test_a_new_migration_runs_once_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "agent.db"
    st = Store(db)
    commit(st, "hm1", range(3))
    st.close()
    runs = []

    def m_extra(d: sqlite_utils.Database) -> None:
        runs.append(1)
        d.table("notes").create({"id": int, "text": str}, pk="id")

    n = len(store_mod.MIGRATIONS)
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, m_extra])
    for _ in range(2):
        st = Store(db)
        assert st.schema_version == n + 1
        assert st.get_meta("schema_version") == str(n + 1)
        assert [m.seq for m in st.messages("interval", 1, 99)] == [1, 2, 3]
        assert "notes" in sqlite_utils.Database(st.conn).table_names()
        st.close()
    assert runs == [1]


def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "agent.db"
    Store(db).close()

    def broken(d: sqlite_utils.Database) -> None:
        d.table("half").create({"id": int}, pk="id")
        raise RuntimeError("boom")

    n = len(store_mod.MIGRATIONS)
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="boom"):
        Store(db)
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == n
    assert "half" not in sqlite_utils.Database(c).table_names()
    c.close()


def test_a_second_opener_during_creation_makes_no_step_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent creates its database on a thread while it starts; a tool or a test may
    open the same new file meanwhile. The second opener reads schema version 0 while the
    first is inside its first step, then waits for the write lock: it must not run the
    steps the first has made by then ("table already exists")."""
    inside, go_on = threading.Event(), threading.Event()
    first = store_mod.MIGRATIONS[0]

    def slow_first(d: sqlite_utils.Database) -> None:
        if threading.current_thread().name == "first":
            inside.set()
            go_on.wait(10)
        first(d)

    monkeypatch.setattr(schema_mod, "MIGRATIONS", [slow_first, *store_mod.MIGRATIONS[1:]])
    db = tmp_path / "agent.db"
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Store(db).close()
        except BaseException as e:
            errors.append(e)

    a = threading.Thread(target=open_one, name="first")
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=open_one, name="second")
    b.start()
    time.sleep(0.3)  # the second has read version 0 and waits for the lock
    go_on.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    st = Store(db)
    assert st.schema_version == len(store_mod.MIGRATIONS)
    st.close()


def test_a_database_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    Store(db).close()
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version = {len(store_mod.MIGRATIONS) + 1}")
    c.close()
    with pytest.raises(StoreError, match="newer"):
        Store(db)


# --- counters -------------------------------------------------------------------------------


def test_boot_counts_every_start(tmp_path: Path) -> None:
    boots = []
    for _ in range(3):
        st = Store(tmp_path / "agent.db")
        boots.append(st.next_boot())
        assert st.boot() == boots[-1]
        st.close()
    assert boots == [1, 2, 3]


def test_seqs_are_never_reused_across_reopen_and_crash(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    st = Store(db)
    assert commit(st, "hm1", range(2)) == [1, 2]
    assert event(st, "a") == 1
    got = [st.next_seq("status") for _ in range(3)]
    assert got == [1, 2, 3]
    assert st.next_seq("ack") == 1
    with pytest.raises(StoreError):
        st.next_seq("interval")  # stored streams get their seq when stored
    st.close()
    # a clean close hands back the unused reservation: no gap
    st = Store(db)
    assert commit(st, "hm1", range(2, 3)) == [3]
    assert event(st, "b") == 2
    assert st.next_seq("status") == 4
    for _ in range(store_mod.SEQ_BLOCK + 5):  # beyond one reserved block
        last = st.next_seq("status")
    assert last == 4 + store_mod.SEQ_BLOCK + 5
    # a crash (no close): the connection just goes away
    st.conn.close()
    st = Store(db)
    after = st.next_seq("status")
    assert last < after <= last + store_mod.SEQ_BLOCK
    assert commit(st, "hm1", range(3, 4)) == [4]
    assert event(st, "c") == 3
    check_chain(st.messages("interval", 1, 99), "interval")
    check_chain(st.messages("event", 1, 99), "event")
    st.close()


# --- stored messages --------------------------------------------------------------------------


def test_chains_are_per_stream_and_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    for life in range(3):
        st = Store(db)
        for i in range(4):
            commit(st, "hm1", range(life * 4 + i, life * 4 + i + 1))
            event(st, "x", i=i)
        st.close()
    st = Store(db)
    ints = check_chain(st.messages("interval", 1, 10**9), "interval")
    evs = check_chain(st.messages("event", 1, 10**9), "event")
    st.close()
    assert len(ints) == len(evs) == 12
    assert [e["body"]["i"] for e in evs] == [0, 1, 2, 3] * 3
    assert [e["body"]["start"] for e in ints] == [rfc3339(T0 + i * 3600) for i in range(12)]


def test_stored_messages_are_compact_and_byte_exact(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    rnd = random.Random(5)
    sent: list[str] = []

    def sign(seq: int, prev: str | None) -> str:
        body = {"x": rnd.random(), "text": "päivä ✓", "n": [rnd.randrange(10**9)] * 3}
        s = SIGNER.sign(envelope(SITE, "interval", seq, prev, time.time(), body))
        sent.append(s)
        return s

    for _ in range(50):
        st.append_message("interval", "p/s/interval", 1, False, sign)
    got = [m.payload for m in st.messages("interval", 1, 50)]
    assert got == sent
    codecs = {r[0] for r in st.conn.execute("SELECT codec FROM messages")}
    assert codecs == {CODEC_DEFLATE_DICT1}
    stored = st.conn.execute("SELECT sum(length(payload) + length(sig)) FROM messages").fetchone()
    assert stored[0] < 0.6 * sum(len(s) for s in sent)
    st.close()


def test_anything_that_would_not_round_trip_is_kept_verbatim(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    odd = [
        "not-a-jws",
        "a.b",
        "eyJhIjoxfQ.eyJhIjoxfQ=.AAAA",  # padding: not the canonical encoding
        "eyJhIjoxfQ.eyJhIjoxfR.AAAA",  # non-zero trailing bits
        "x.y.z.w",
    ]
    for s in odd:

        def const(seq: int, prev: str | None, s: str = s) -> str:
            return s

        st.append_message("weird", "p/s/weird", 0, True, const)
    msgs = st.messages("weird", 1, 99)
    assert [m.payload for m in msgs] == odd
    assert all(m.retain and m.qos == 0 and m.topic == "p/s/weird" for m in msgs)
    assert {r[0] for r in st.conn.execute("SELECT codec FROM messages")} == {CODEC_VERBATIM}
    st.close()


@settings(max_examples=150, deadline=None)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
        lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
        max_leaves=20,
    ),
    seq=st.integers(1, 2**40),
)
def test_pack_round_trips_any_signed_envelope(body: Any, seq: int) -> None:
    compact = SIGNER.sign(envelope(SITE, "event", seq, None, 1.7e9, body))
    p = pack_jws(compact, ZDICT_V1)
    assert p.codec == CODEC_DEFLATE_DICT1
    assert len(p.sig) == 64
    assert unpack_jws(p.header, p.codec, p.payload, p.sig, ZDICT_V1) == compact


def test_commit_intervals_is_idempotent_and_saves_the_state(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    assert commit(st, "hm1", range(0, 3), '{"b": 3}') == [1, 2, 3]
    assert commit(st, "hm1", range(0, 3), '{"b": 3}') == []
    assert commit(st, "hm1", range(1, 5), '{"b": 5}') == [4, 5]  # overlap: only 3, 4 new
    assert st.load_agg_state("hm1") == '{"b": 5}'
    assert st.load_agg_state("dp1") is None
    assert commit(st, "dp1", range(0, 2)) == [6, 7]  # another device, the same periods
    envs = check_chain(st.messages("interval", 1, 99), "interval")
    keys = [(e["body"]["device"], e["body"]["start"]) for e in envs]
    assert len(keys) == len(set(keys)) == 7
    st.close()


def test_a_failing_signer_leaves_no_trace(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    commit(st, "hm1", range(2), '{"ok": 1}')
    calls = 0

    def flaky(body: dict[str, Any], seq: int, prev: str | None) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("key gone")
        return signer_for("interval")(body, seq, prev)

    with pytest.raises(ValueError):
        st.commit_intervals("hm1", '{"bad": 1}', [record("hm1", 2), record("hm1", 3)], "t", flaky)
    assert st.load_agg_state("hm1") == '{"ok": 1}'
    assert [m.seq for m in st.messages("interval", 1, 99)] == [1, 2]
    assert commit(st, "hm1", range(2, 4)) == [3, 4]  # same seqs, chain intact
    check_chain(st.messages("interval", 1, 99), "interval")
    st.close()


def test_outbox_unsent_mark_sent_mark_unsent(tmp_path: Path) -> None:
    now = [1000.0]
    st = Store(tmp_path / "agent.db", clock=lambda: now[0])
    commit(st, "hm1", range(5))
    for i in range(3):
        event(st, "e", i=i)
    assert st.backlog() == {"interval": 5, "event": 3}
    assert st.last_publish() is None
    first = st.unsent(4)
    assert [m.id for m in first] == sorted(m.id for m in first)
    assert [(m.stream, m.seq) for m in first] == [("interval", s) for s in (1, 2, 3, 4)]
    assert [m.seq for m in st.unsent(10, after_id=first[-1].id)] == [5, 1, 2, 3]
    st.mark_sent([m.id for m in first])
    assert st.last_publish() == 1000.0
    assert st.backlog() == {"interval": 1, "event": 3}
    assert (st.unsent(10)[0].stream, st.unsent(10)[0].seq) == ("interval", 5)
    st.mark_sent([m.id for m in st.unsent(10)])
    assert st.backlog() == {}
    assert st.unsent(10) == []
    # resend: the same bytes again
    before = {m.seq: m.payload for m in st.messages("interval", 2, 3)}
    assert st.mark_unsent("interval", 2, 3) == 2
    again = st.unsent(10)
    assert {m.seq: m.payload for m in again} == before
    assert st.mark_unsent("interval", 100, 200) == 0
    assert st.mark_unsent("event", 1, 100) == 3
    assert st.backlog() == {"interval": 2, "event": 3}
    st.close()


def test_intervals_range_and_order(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    commit(st, "hm2", range(0, 6))
    commit(st, "hm1", range(0, 6))
    got = st.intervals(T0 + 3600, T0 + 4 * 3600)
    assert [(r["device"], r["start"]) for r in got] == [
        (d, rfc3339(T0 + i * 3600)) for d in ("hm1", "hm2") for i in (1, 2, 3)
    ]
    assert got[0] == record("hm1", 1)
    only = st.intervals(T0 + 0.5, T0 + 3600.5, device="hm2")  # fractional bounds
    assert [r["start"] for r in only] == [rfc3339(T0 + 3600)]
    assert st.intervals(T0 + 6 * 3600, T0 + 9 * 3600) == []
    assert set(st.interval_keys(T0, T0 + 10 * 3600)) == set(record("hm1", 0))
    assert st.interval_count() == 12
    st.close()


# --- raw samples and pruning -------------------------------------------------------------------


def sample(dev: str, ts: float | None, v: float = 1.0) -> SampleRow:
    return SampleRow(dev, ts, 5.0, 1, True, True, {"energy_kwh": v, "flow_m3h": 0.25}, ["x"])


def test_samples_round_trip_and_since(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    st.add_samples([sample("hm1", T0 + i, float(i)) for i in (5, 1, 3)] + [sample("dp1", T0)])
    st.add_samples([sample("hm1", T0 + i, float(i)) for i in (2, 4, 6)] + [sample("hm1", None)])
    got = st.samples_since("hm1", T0 + 2)
    assert [r.ts for r in got] == [T0 + 3, T0 + 4, T0 + 5, T0 + 6]
    assert got[0] == sample("hm1", T0 + 3, 3.0)
    assert st.samples_since("dp1", T0 + 1) == []
    last = st.last_samples()
    assert last["hm1"].ts is None and last["dp1"].ts == T0
    assert st.sample_count() == 8
    st.close()


def test_prune_drops_old_samples_only(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db", sample_retention_days=1)
    day = 86400
    for d in range(4):
        st.add_samples([sample("hm1", T0 + d * day + i) for i in range(10)])
    commit(st, "hm1", range(3))
    event(st, "e")
    now = T0 + 3 * day + 5  # cutoff T0 + 2 days + 5: day 2 (up to +9 s) and day 3 stay
    assert st.prune(now) == {"samples": 20}
    assert [r.ts for r in st.samples_since("hm1", 0)][:1] == [T0 + 2 * day]
    assert st.prune(now) == {"samples": 0}
    assert len(st.messages("interval", 1, 9)) == 3 and st.backlog()["event"] == 1
    st.close()


def test_size_cap_drops_raw_samples_oldest_first_never_records(tmp_path: Path) -> None:
    rnd = random.Random(3)
    st = Store(tmp_path / "agent.db", max_mb=0.2, sample_retention_days=10_000)
    for i in range(200):  # ~1 MB of incompressible samples
        st.add_samples(
            [
                SampleRow("hm1", T0 + i * 60 + k, 0.0, 1, True, True, {"v": rnd.random()}, [])
                for k in range(60)
            ]
        )
    commit(st, "hm1", range(50))
    for _ in range(20):
        event(st, "e")
    assert st.size_bytes() > 0.2 * 1024 * 1024
    before = st.sample_count()
    out = st.prune(T0)
    assert set(out) == {"samples"} and out["samples"] > 0
    assert st.size_bytes() <= 0.2 * 1024 * 1024
    assert st.sample_count() == before - out["samples"]
    rest = st.samples_since("hm1", 0)
    assert rest[-1].ts == T0 + 199 * 60 + 59  # the newest kept
    assert rest[0].ts is not None and rest[0].ts > T0  # the oldest went
    check_chain(st.messages("interval", 1, 99), "interval")
    assert st.backlog() == {"interval": 50, "event": 20}
    # only records left and still over a tiny cap: they stay
    st.max_mb = 0.01
    left = st.sample_count()
    assert st.prune(T0) == {"samples": left} and left > 0
    assert st.sample_count() == 0
    assert st.size_bytes() > 0.01 * 1024 * 1024  # still over: records are never dropped
    assert len(st.messages("interval", 1, 99)) == 50
    st.close()


# --- threads ----------------------------------------------------------------------------------


def test_only_the_opening_thread_may_use_the_store(tmp_path: Path) -> None:
    st = Store(tmp_path / "agent.db")
    errors: list[BaseException] = []

    def other() -> None:
        try:
            st.next_seq("status")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
    assert st.next_seq("status") == 1
    st.close()
    with pytest.raises(StoreError):
        st.get_meta("boot")


# --- crash safety -----------------------------------------------------------------------------

CHILD = r"""
import json, sys, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from agent.timefmt import rfc3339
from agent.jws import Signer, envelope
from agent.store import SampleRow, Store

db, key_pem, first = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
signer = Signer(serialization.load_pem_private_key(key_pem, None))
st = Store(db)
st.next_boot()
T0 = 1735689600

def sign(stream):
    def f(body, seq, prev):
        return signer.sign(envelope("site-1", stream, seq, prev, time.time(), body))
    return f

i = first
print("go", flush=True)
while True:
    for dev in ("hm1", "dp1"):
        recs = [{"device": dev, "role": "x", "start": rfc3339(T0 + k * 60),
                 "end": rfc3339(T0 + k * 60 + 60), "period_s": 60, "samples": 1, "flags": []}
                for k in range(i, i + 3)]
        st.add_samples([SampleRow(dev, T0 + i * 60.0, 0.0, 1, True, True, {"v": 1.0}, [])])
        st.commit_intervals(dev, json.dumps({"next": i + 3}), recs, "p/interval", sign("interval"))
        st.add_event({"kind": "k", "i": i}, "p/event", sign("event"))
        st.next_seq("status")
    i += 3
"""


def test_sigkill_mid_commit_loop_leaves_no_gap(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    db = tmp_path / "agent.db"
    pem = SIGNER.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    rnd = random.Random(int(os.environ.get("DH_TEST_SEED", "7")))
    first = 0
    status_seen = 0
    for _ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), pem, str(first)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "go"
        time.sleep(rnd.uniform(0.3, 1.0))
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        st = Store(db)
        ints = check_chain(st.messages("interval", 1, 10**9), "interval")
        check_chain(st.messages("event", 1, 10**9), "event")
        assert len(ints) > 0
        for dev in ("hm1", "dp1"):
            starts = [e["body"]["start"] for e in ints if e["body"]["device"] == dev]
            # each device's periods once, in order, none missing
            assert starts == [rfc3339(T0 + k * 60) for k in range(len(starts))]
            # records and the aggregator state committed together
            state = json.loads(st.load_agg_state(dev) or "{}")
            assert state["next"] == len(starts)
        s = st.next_seq("status")
        assert s > status_seen
        status_seen = s
        first = min(
            json.loads(st.load_agg_state(d) or "{}")["next"] for d in ("hm1", "dp1")
        )  # the child resumes where the slower device stopped: re-commits are skipped
        st.close()
    st = Store(db)
    assert st.boot() == 3
    st.close()
