"""Interval records kept in typed columns (agent/store_fields.py, schema 3): the signed
message is rebuilt byte-exactly from the columns (random records; whatever would not be
exact keeps its payload blob), the export text SQLite makes equals what Python writes, a
database of schema 2 keeps working after the migration (old rows read as before, the chain
goes on), and the page's reader decodes both forms."""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.store_fields as sf
import agent.store_schema as schema_mod
from agent.export import export_records
from agent.jws import Signer, b64u_decode, chain_hash, envelope, verify
from agent.store import CODEC_DEFLATE_DICT1, CODEC_FIELDS, Store
from agent.timefmt import rfc3339
from agent.web.data import StoreReader

SITE = "site-1"
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
SIGNER = Signer(Ed25519PrivateKey.generate())
KEYS = {SIGNER.kid: SIGNER.public_key}


class Signed:
    """The sign callback of ``commit_intervals``; keeps every compact JWS it made."""

    def __init__(self, ts: float | None = None) -> None:
        self.out: list[str] = []
        self.ts = ts

    def __call__(self, body: dict[str, Any], seq: int, prev: str | None) -> str:
        ts = time.time() if self.ts is None else self.ts
        s = SIGNER.sign(envelope(SITE, "interval", seq, prev, ts, body))
        self.out.append(s)
        return s


def hm(i: int, device: str = "hm1", **over: Any) -> dict[str, Any]:
    s = T0 + i * 3600
    rec: dict[str, Any] = {
        "device": device,
        "role": "heat_meter",
        "start": rfc3339(s),
        "end": rfc3339(s + 3600),
        "period_s": 3600,
        "samples": 12,
        "flags": ["interpolated", "partial"] if i % 4 == 0 else [],
        "energy_start_kwh": round(48000.0 + 25.125 * i, 3),
        "energy_end_kwh": round(48000.0 + 25.125 * (i + 1), 3),
        "energy_kwh": 25.125,
        "volume_start_m3": round(1800.0 + 0.512345 * i, 6),
        "volume_end_m3": round(1800.0 + 0.512345 * (i + 1), 6),
        "volume_m3": 0.512345,
        "flow_avg_m3h": 0.512345,
        "flow_max_m3h": 0.75,
        "power_avg_kw": 25.125,
        "power_max_kw": 31.2,
        "supply_avg_c": 80.12,
        "return_avg_c": None if i % 5 == 1 else 40.0,
        "cooling_avg_c": -1.5 if i % 7 == 3 else 40.12,
        "flow_limit_m3h": 2.5,
        "limit_exceeded": i % 3 == 2,
    }
    rec.update(over)
    return rec


class _PythonOnly:
    """The store seen through the interfaces the export had before (Python formats all)."""

    def __init__(self, store: Store) -> None:
        self.interval_keys = store.interval_keys
        self.iter_intervals = store.iter_intervals


def export(src: Any, fmt: str, device: str | None = None) -> str:
    out = io.StringIO()
    export_records(src, 0, 2e9, fmt, out, device)
    return out.getvalue()


def assert_exports_equal(store: Store, device: str | None = None) -> None:
    for fmt in ("csv", "json"):
        assert export(store, fmt, device) == export(_PythonOnly(store), fmt, device)


def codecs(store: Store) -> list[int]:
    return [int(c) for (c,) in store.conn.execute("SELECT codec FROM messages ORDER BY id")]


def fast_flags(store: Store) -> list[int]:
    q = "SELECT fast FROM interval_fields ORDER BY msg"
    return [int(f) for (f,) in store.conn.execute(q)]


def assert_byte_exact(store: Store, signed: list[str]) -> None:
    """Every stored interval message is the very string that was signed, and chained."""
    got = [m.payload for m in store.messages("interval", 1, len(signed) + 10)]
    assert got == signed
    prev = None
    for s in got:
        env = verify(s, KEYS)
        assert env["prev"] == prev
        prev = chain_hash(s)
    bodies = [json.loads(b64u_decode(s.split(".")[1]))["body"] for s in signed]
    assert store.intervals(0, 2e9) == sorted(bodies, key=lambda b: (b["device"], b["start"]))


def test_records_are_kept_as_fields_and_rebuilt_byte_exactly(tmp_path: Path) -> None:
    st_ = Store(tmp_path / "agent.db")
    sign = Signed()
    st_.commit_intervals("hm1", "{}", [hm(i) for i in range(30)], "t/interval", sign)
    st_.commit_intervals("hm2", "{}", [hm(i, "hm2") for i in range(5)], "t/interval", sign)
    assert codecs(st_) == [CODEC_FIELDS] * 35
    assert fast_flags(st_) == [1] * 35

    def payload_bytes() -> int:
        return int(st_.conn.execute("SELECT sum(length(payload)) FROM messages").fetchone()[0])

    def undelivered() -> int:
        return int(st_.conn.execute("SELECT count(*) FROM undelivered").fetchone()[0])

    assert payload_bytes() == 0  # the envelope lives in the columns ...
    assert undelivered() == 35  # ... and, until the broker has it, compressed (the drain)
    assert_byte_exact(st_, sign.out)
    assert_exports_equal(st_)
    assert_exports_equal(st_, "hm2")
    # the drain (both of its reads) and a resend read the same bytes
    assert [m.payload for m in st_.unsent(100)] == sign.out
    assert [m.data for m in st_.unsent_wire(100)] == [s.encode("ascii") for s in sign.out]
    assert [m.data for m in st_.unsent_wire(3, after_id=10)] == [
        s.encode("ascii") for s in sign.out[10:13]
    ]
    st_.mark_sent([m.id for m in st_.unsent(100)])
    assert undelivered() == 0  # sent: the record lives in its columns only
    assert_byte_exact(st_, sign.out)
    assert st_.mark_unsent("interval", 3, 7) == 5  # a resend rebuilds from the columns
    assert [m.payload for m in st_.unsent(100)] == sign.out[2:7]
    assert [m.data for m in st_.unsent_wire(100)] == [s.encode("ascii") for s in sign.out[2:7]]
    st_.close()
    # reopened (the chain tip is rebuilt from the columns): the chain goes on
    st_ = Store(tmp_path / "agent.db")
    st_.commit_intervals("hm1", "{}", [hm(30)], "t/interval", sign)
    assert_byte_exact(st_, sign.out)
    st_.close()


def test_what_does_not_fit_keeps_its_blob_or_is_formatted_by_python(tmp_path: Path) -> None:
    st_ = Store(tmp_path / "agent.db")
    sign = Signed()
    recs = [
        hm(0),
        hm(1, vendor_extra="x"),  # a key without a column: the blob
        hm(2, start=rfc3339(T0 + 2 * 3600 + 0.5)),  # not whole seconds: the blob
        hm(3, energy_kwh=0.1 + 0.2),  # 17 digits: JSON text in the column, Python formats
        hm(4, volume_m3=1e-06),  # repr with an exponent
        hm(5, flags=["a;b", "c"]),  # would not split back
        hm(6, samples=12.0, limit_exceeded=None, role='he said "hi", ok'),
        hm(7, power_limit_kw=125, meter_id="12345678", energy_kwh=-0.0),
        hm(8, end=None, supply_avg_c=1e300, return_avg_c=True),
        hm(9, device="hm,1"),
        hm(10, cooling_avg_c=-0.04, flags=[]),  # negative, below one
    ]
    for r in recs:
        st_.commit_intervals(str(r["device"]), "{}", [r], "t/interval", sign)
    assert codecs(st_) == [CODEC_FIELDS] + [CODEC_DEFLATE_DICT1] * 2 + [CODEC_FIELDS] * 8
    assert fast_flags(st_) == [1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert_byte_exact(st_, sign.out)
    assert_exports_equal(st_)
    st_.close()


def test_the_write_time_check_keeps_sqlites_text_honest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were SQLite to format a number otherwise than Python, the row is formatted by Python:
    here with a format that rounds to 2 decimals (the check and the export use the same)."""

    def rounding(col: str, dec: int) -> str:
        return f"printf('%.2f', {col} / {10**dec}.0)"

    monkeypatch.setattr(sf, "num_sql", rounding)
    st_ = Store(tmp_path / "agent.db")
    sign = Signed()
    recs = [hm(i, energy_start_kwh=0.5, energy_end_kwh=0.5) for i in range(3)]
    st_.commit_intervals("hm1", "{}", recs, "t/interval", sign)
    assert fast_flags(st_) == [0, 0, 0]
    assert_exports_equal(st_)
    st_.close()


_FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.builds(
    round, st.floats(-1e7, 1e7), st.integers(0, 7)
)
_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | _FLOATS
    | st.text(max_size=6)
    | st.lists(st.sampled_from(["partial", "no_data", "x;y", "", "ü"]), max_size=3)
)


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records of one device: known keys with values of any kind, sometimes odd ones."""
    keys = draw(st.sets(st.sampled_from(sf.BODY_COLUMNS[4:]), max_size=12))
    out = []
    for i in range(draw(st.integers(1, 4))):
        rec: dict[str, Any] = {"device": "d1", "start": rfc3339(T0 + 3600 * i)}
        rec["role"] = draw(st.sampled_from(["heat_meter", "dp_sensor"]) | st.text(max_size=4))
        rec["end"] = draw(st.just(rfc3339(T0 + 3600 * (i + 1))) | _VALUES)
        for k in sorted(keys):
            kind, dec = sf.KIND[k]
            typical = st.builds(round, st.floats(-1e6, 1e6), st.just(dec))
            rec[k] = draw(typical | _VALUES if kind == sf.NUM else _VALUES)
        if draw(st.booleans()):
            rec["odd_key"] = 1
        out.append(rec)
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(recs=records(), ts=st.floats(1.6e9, 2e9))
def test_random_records_are_byte_exact_and_export_as_python_writes(
    recs: list[dict[str, Any]], ts: float
) -> None:
    with tempfile.TemporaryDirectory() as d:
        st_ = Store(Path(d) / "agent.db")
        sign = Signed(ts)
        st_.commit_intervals("d1", "{}", recs, "t/interval", sign)
        # every record whose keys all have a column is rebuilt exactly: kept as fields
        want = [CODEC_DEFLATE_DICT1 if "odd_key" in r else CODEC_FIELDS for r in recs]
        assert codecs(st_) == want
        assert_byte_exact(st_, sign.out)  # unsent: read from the payload riding along
        st_.mark_sent([m.id for m in st_.unsent(len(recs) + 1)])
        assert_byte_exact(st_, sign.out)  # sent: rebuilt from the columns
        assert_exports_equal(st_)
        st_.close()


def test_a_schema_2_database_keeps_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "agent.db"
    sign = Signed()
    with monkeypatch.context() as m:
        m.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:2])
        old = Store(db)
        assert old.schema_version == 2
        old.commit_intervals("hm1", "{}", [hm(i) for i in range(10)], "t/interval", sign)
        old.mark_sent([m.id for m in old.unsent(5)])
        old.close()
    ro = Store(db, readonly=True)  # the tools read it as it is, never migrate it
    assert ro.schema_version == 2
    assert_byte_exact(ro, sign.out)
    assert_exports_equal(ro)
    ro.close()
    st_ = Store(db)  # the agent migrates it
    assert st_.schema_version == 3
    st_.commit_intervals("hm1", "{}", [hm(i) for i in range(10, 20)], "t/interval", sign)
    st_.commit_intervals("hm2", "{}", [hm(i, "hm2") for i in range(3)], "t/interval", sign)
    assert codecs(st_) == [CODEC_DEFLATE_DICT1] * 10 + [CODEC_FIELDS] * 13
    assert_byte_exact(st_, sign.out)  # old and new, one chain
    assert_exports_equal(st_)
    assert [m.payload for m in st_.unsent(100)] == sign.out[5:]
    st_.close()


def test_a_reader_opened_before_new_labels_reads_them(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    st_ = Store(db)
    sign = Signed()
    st_.commit_intervals("hm1", "{}", [hm(i) for i in range(3)], "t/interval", sign)
    ro = Store(db, readonly=True)
    web = StoreReader(db)
    assert len(web.intervals("hm1", T0, T0 + 86400)) == 3
    st_.commit_intervals("hm7", "{}", [hm(i, "hm7", role="new_role") for i in range(3)], "t", sign)
    assert_exports_equal(ro)
    assert "hm7,new_role" in export(ro, "csv")
    assert web.intervals("hm7", T0, T0 + 86400) == ro.intervals(T0, T0 + 86400, "hm7")
    assert len(ro.intervals(0, 2e9)) == 6
    web.close()
    ro.close()
    st_.close()


def test_the_page_reader_decodes_both_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "agent.db"
    sign = Signed()
    with monkeypatch.context() as m:
        m.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:2])
        old = Store(db)
        old.commit_intervals("hm1", "{}", [hm(i) for i in range(4)], "t/interval", sign)
        old.close()
    st_ = Store(db)
    st_.commit_intervals("hm1", "{}", [hm(i) for i in range(4, 8)], "t/interval", sign)
    web = StoreReader(db)
    got = web.intervals("hm1", T0, T0 + 8 * 3600)
    assert got == st_.intervals(T0, T0 + 8 * 3600, "hm1") == [hm(i) for i in range(8)]
    web.close()
    st_.close()


@settings(max_examples=300, deadline=None)
@given(v=_FLOATS, dec=st.sampled_from([1, 2, 3, 6]))
def test_a_scaled_number_is_the_float_it_was(v: float, dec: int) -> None:
    e = sf.Encoded()
    got = sf._enc_value(e, {1: "position_avg_pct", 2: "supply_avg_c", 3: "energy_kwh",
                            6: "volume_m3"}[dec], v, T0, lambda t: 1)  # fmt: skip
    back = sf._dec(sf.NUM, dec, got, T0, str)
    assert repr(back) == repr(v) and math.copysign(1, back) == math.copysign(1, v)
    if type(got) is int:
        assert e.fast and e.checks[0][2] == repr(v)
    else:
        assert not e.fast and json.loads(got) == v
