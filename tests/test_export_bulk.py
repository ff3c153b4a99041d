"""The export's fast paths (issue 16) give exactly what the plain per-row code gives:
bulk decoding of stored envelopes (agent.store_bulk) and CSV rows (agent.export.csv_rows)."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.export import csv_cell, csv_rows
from agent.jws import Signer, envelope
from agent.store_bulk import envelopes_of
from agent.store_codec import CODEC_VERBATIM, envelope_of, pack_jws
from agent.store_schema import StoreError
from agent.store_zdict import ZDICT_V1


def test_csv_rows_write_what_csv_cell_writes_for_every_value_type() -> None:
    cols = ["a", "b", "c", "d", "e", "missing"]
    recs: list[dict[str, Any]] = [
        {"a": "hm1", "b": 1.5, "c": None, "d": True, "e": ["limited", "partial"]},
        {"a": "x,y", "b": 3, "c": 2.25, "d": False, "e": []},
        {"a": 'q"uote', "b": None, "c": [1, 2], "d": None, "e": ["interpolated"]},
        {"a": "z", "b": {"k": 1}, "c": 7, "d": 0.5, "e": [1.5, "x"]},  # types change late
        {"a": "", "b": 1e16, "c": -0.0, "d": True, "e": None},
    ]
    want, got = io.StringIO(), io.StringIO()
    csv.writer(want, lineterminator="\n").writerows(
        [csv_cell(r.get(k)) for k in cols] for r in recs
    )
    csv.writer(got, lineterminator="\n").writerows(csv_rows(recs, cols))
    assert got.getvalue() == want.getvalue()
    assert "true" in got.getvalue() and "limited;partial" in got.getvalue()


def stored(n: int) -> list[tuple[int, bytes]]:
    signer = Signer(Ed25519PrivateKey.generate())
    rows = []
    for i in range(n):
        body = {"device": "hm1", "start": "2025-01-01T00:00:00Z", "energy_kwh": i * 0.1, "n": i}
        compact = signer.sign(envelope("s", "interval", i + 1, None, time.time(), body))
        p = pack_jws(compact, ZDICT_V1)
        rows.append((p.codec, p.payload))
    return rows


def test_bulk_envelopes_equal_one_by_one() -> None:
    rows = stored(50)
    assert envelopes_of(rows, ZDICT_V1) == [envelope_of("", c, p, ZDICT_V1) for c, p in rows]
    assert [e["body"]["n"] for e in envelopes_of(rows, ZDICT_V1)] == list(range(50))


def test_bulk_with_a_verbatim_row_decodes_it_too() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    compact = signer.sign(envelope("s", "event", 1, None, time.time(), {"kind": "x"}))
    rows = [*stored(3), (CODEC_VERBATIM, compact.encode("ascii"))]
    envs = envelopes_of(rows, ZDICT_V1)
    assert [e["seq"] for e in envs] == [1, 2, 3, 1]
    assert envs[3]["body"] == {"kind": "x"}


def test_bulk_never_misaligns_on_a_bad_row() -> None:
    """A payload holding two JSON values (or none) must not shift the rows after it."""
    import zlib

    def deflate(raw: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT_V1)
        return c.compress(raw) + c.flush()

    good = stored(2)
    two = (good[0][0], deflate(json.dumps({"a": 1}).encode() + b',{"b":2}'))
    with pytest.raises((StoreError, ValueError)):
        envelopes_of([good[0], two, good[1]], ZDICT_V1)
    empty = (good[0][0], deflate(b""))
    with pytest.raises((StoreError, ValueError)):
        envelopes_of([good[0], empty, good[1]], ZDICT_V1)
