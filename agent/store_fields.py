"""Interval records in typed columns (schema 3, table ``interval_fields``). Pure.

A signed interval record is stored as its fields, one column per known record key
(``FIELDS``) plus the envelope's ``site``, ``ts``, ``prev`` and ``v``; the message row keeps
the protected header (by id) and the 64 raw signature bytes. The signed payload is rebuilt
from the columns as ``agent.jws`` writes it (``payload_text``: compact JSON, sorted keys).
The store only uses this form when the rebuilt bytes equal the signed ones (checked at
write time); anything else keeps the compressed payload blob.

Columns have no declared type (no affinity), so SQLite keeps each value as it is given:

- ``num`` (a decimal figure with ``scale`` decimals, e.g. energy 3, volume 6): a float
  ``v`` equal to ``m / 10**scale`` is the integer ``m`` (4 bytes where a REAL takes 8);
- ``int``: an integer; ``bool``: 1 / 0;
- ``label``: a text, as the id of a row of ``labels`` (device, role, site, meter id);
- ``flags``: a list of texts, as the label of the texts joined with ``;``;
- ``time``: the record's start (whole-second RFC 3339) as Unix seconds; ``end``: the end
  as seconds after the start; the envelope's ``ts`` as milliseconds after the start;
- any other value (a float that does not fit the scale, a text in a number field ...):
  its JSON text as a BLOB; NULL is null; a key absent from the record is NULL too, the
  record's key list (``shape``) tells which keys it has.

``fast`` is 1 when SQLite can write the record's CSV and JSON text itself (``csv_exprs``,
``json_expr``): every value in its own kind's form, none of them a BLOB, and the numbers
and times formatted by SQLite exactly as Python writes them (checked at write time with
the very expressions the export uses, ``check_query``). Other rows are formatted by Python.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any

from drivers.dataclass_lite import mutable


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u_encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


NUM, INT, BOOL, LABEL, FLAGS, TIME, END = "num", "int", "bool", "label", "flags", "time", "end"

# (key, kind, decimals): the record keys that have a column
FIELDS: tuple[tuple[str, str, int], ...] = (
    ("device", LABEL, 0),
    ("role", LABEL, 0),
    ("start", TIME, 0),
    ("end", END, 0),
    ("period_s", INT, 0),
    ("samples", INT, 0),
    ("flags", FLAGS, 0),
    ("energy_start_kwh", NUM, 3),
    ("energy_end_kwh", NUM, 3),
    ("energy_kwh", NUM, 3),
    ("volume_start_m3", NUM, 6),
    ("volume_end_m3", NUM, 6),
    ("volume_m3", NUM, 6),
    ("flow_avg_m3h", NUM, 6),
    ("flow_max_m3h", NUM, 6),
    ("power_avg_kw", NUM, 3),
    ("power_max_kw", NUM, 3),
    ("supply_avg_c", NUM, 2),
    ("return_avg_c", NUM, 2),
    ("cooling_avg_c", NUM, 2),
    ("flow_limit_m3h", NUM, 6),
    ("power_limit_kw", NUM, 3),
    ("limit_exceeded", BOOL, 0),
    ("dp_min_kpa", NUM, 2),
    ("dp_avg_kpa", NUM, 2),
    ("dp_max_kpa", NUM, 2),
    ("position_avg_pct", NUM, 1),
    ("limit_min_pct", NUM, 1),
    ("meter_id", LABEL, 0),
)
KIND = {k: (kind, dec) for k, kind, dec in FIELDS}
BODY_COLUMNS = tuple(k for k, _, _ in FIELDS)
LABEL_COLUMNS = tuple(k for k, kind, _ in FIELDS if kind in (LABEL, FLAGS))
ENV_COLUMNS = ("site", "ts", "prev", "v")
# every column after ``msg``, in table order
COLUMNS = ("fast", "shape", *ENV_COLUMNS, *BODY_COLUMNS)
ENV_KEYS = frozenset({"body", "prev", "seq", "site", "stream", "ts", "v"})

CREATE_SQL = (
    "CREATE TABLE labels (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
    "CREATE TABLE interval_fields (msg INTEGER PRIMARY KEY, "
    + ", ".join(f'"{c}"' for c in COLUMNS)
    + ")",
    # the compressed payload of a record kept as fields, only until the broker has it (the
    # drain reads it as cheaply as a blob); a small table whose pages are reused
    "CREATE TABLE undelivered (msg INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
)
SELECT_COLUMNS = ", ".join(f'f."{c}"' for c in COLUMNS)
_MAX_EXACT = 2**53
JText = Callable[[int, str], str]
_ISO = "%Y-%m-%dT%H:%M:%SZ"


class NoFit(ValueError):
    """The message cannot be kept as fields (it keeps the payload blob)."""


@functools.lru_cache(maxsize=1024)  # a record's end is the next one's start
def iso_seconds(t: int) -> str:
    return time.strftime(_ISO, time.gmtime(t))


def iso_ms(ms: int) -> str:
    s, f = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{f:03d}Z"


def _parse_seconds(s: str) -> int:
    t = calendar.timegm(time.strptime(s, _ISO))
    if iso_seconds(t) != s:
        raise ValueError(s)
    return t


def _parse_ms(s: str) -> int:
    if len(s) != 24 or s[19] != "." or s[23] != "Z" or not s[20:23].isdigit():
        raise ValueError(s)
    ms = _parse_seconds(s[:19] + "Z") * 1000 + int(s[20:23])
    if iso_ms(ms) != s:
        raise ValueError(s)
    return ms


def _token(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@mutable
class Encoded:
    """A record's column values; ``checks``: (SQL expression, parameter, expected text) the
    write-time check runs; ``fast`` until a value is found that SQLite cannot format."""

    values: dict[str, Any] = field(default_factory=dict)
    fast: bool = True
    checks: list[tuple[str, Any, str]] = field(default_factory=list)


def num_sql(col: str, dec: int) -> str:
    """The text SQLite makes of a ``num`` column (NULL for null): the shortest repr for the
    values it is used for (checked at write time)."""
    return f"CAST({col} / {10**dec}.0 AS TEXT)"


def time_sql(start: str, off: str | None = None) -> str:
    t = start if off is None else f"{start} + {off}"
    return f"strftime('{_ISO}', {t}, 'unixepoch')"


def _plain_float(v: float) -> bool:
    return v == 0.0 or 1e-4 <= abs(v) < 1e15


def _enc_value(e: Encoded, key: str, v: Any, start: int, label: Callable[[str], int]) -> Any:
    kind, dec = KIND[key]
    t = type(v)
    if v is None:
        if kind in (TIME, END):
            e.fast = False
        return None
    if kind == NUM and t is float and _plain_float(v):  # finite, no exponent in its repr
        p = 10**dec
        m = round(v * p)
        if abs(m) < _MAX_EXACT and repr(m / p) == repr(v):
            e.checks.append((num_sql("?", dec), m, repr(v)))
            return m
    elif kind == INT and t is int and abs(v) < 2**63:
        return v
    elif kind == BOOL and t is bool:
        return int(v)
    elif kind == LABEL and t is str and "\x00" not in v:
        return label(v)
    elif kind == FLAGS and t is list and all(type(x) is str for x in v):
        text = ";".join(v)
        if "\x00" not in text and (text.split(";") if text else []) == v:
            return label(text)
    elif kind == END and t is str:
        try:
            off = _parse_seconds(v) - start
        except ValueError:
            pass
        else:
            e.checks.append((time_sql("?"), start + off, v))
            return off
    e.fast = False
    return _token(v)


def encode(env: Mapping[str, Any], label: Callable[[str], int]) -> Encoded:
    """The columns of a signed interval envelope (NoFit: keep the payload blob)."""
    body = env.get("body")
    if set(env) != ENV_KEYS or type(body) is not dict or not body:
        raise NoFit("not an interval envelope")
    if not set(body) <= KIND.keys():
        raise NoFit("a key without a column")
    site, ts, prev, v = env["site"], env["ts"], env["prev"], env["v"]
    if type(site) is not str or "\x00" in site or type(ts) is not str or type(v) is not int:
        raise NoFit("envelope")
    if prev is not None and type(prev) is not str:
        raise NoFit("envelope")
    try:
        start = _parse_seconds(body["start"]) if type(body.get("start")) is str else None
        if start is None:
            raise NoFit("start")
        ts_ms = _parse_ms(ts) - start * 1000
        raw_prev = None if prev is None else _b64u_decode(prev)
    except (ValueError, binascii.Error) as err:
        raise NoFit("envelope") from err
    e = Encoded()
    e.values.update(site=label(site), ts=ts_ms, prev=raw_prev, v=v, start=start)
    e.checks.append((time_sql("?"), start, body["start"]))
    for key, val in body.items():
        if key != "start":
            e.values[key] = _enc_value(e, key, val, start, label)
    if len(body) < 2:
        e.fast = False  # a one-column CSV row has its own quoting rules
    return e


def _dec(kind: str, dec: int, v: Any, start: int, text: Callable[[int], str]) -> Any:
    if v is None:
        return None
    if type(v) is bytes:
        return json.loads(v)
    if kind == NUM:
        return v / 10**dec
    if kind == BOOL:
        return v == 1
    if kind == LABEL:
        return text(v)
    if kind == FLAGS:
        s = text(v)
        return s.split(";") if s else []
    if kind == TIME:
        return iso_seconds(v)
    if kind == END:
        return iso_seconds(start + v)
    return v


def decode_body(
    row: Mapping[str, Any], keys: Sequence[str], text: Callable[[int], str]
) -> dict[str, Any]:
    """The record body of a row (``keys``: the record's keys, sorted as signed)."""
    start = row["start"]
    return {k: _dec(*KIND[k], row[k], start, text) for k in keys}


_KEY_JSON = {k: json.dumps(k) + ":" for k in BODY_COLUMNS}


@functools.lru_cache(maxsize=256)
def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, str, int, str], ...]:
    """Per key list: (``"key":`` text, kind, 10**decimals, key)."""
    return tuple((_KEY_JSON[k], KIND[k][0], 10 ** KIND[k][1], k) for k in keys)


def payload_text(
    row: Mapping[str, Any], stream: str, seq: int, keys: tuple[str, ...], jtext: JText
) -> str:
    """The signed payload rebuilt from a row, written as ``agent.jws`` signs (compact JSON,
    sorted keys, UTF-8 as is) but without building the objects first; the store keeps a
    record as fields only when this gives the signed bytes back (checked at write time).
    ``keys``: the record's keys, sorted; ``jtext(id, kind)``: a label's JSON text. Each
    value is written as the inverse of ``_enc_value`` stored it."""
    start = row["start"]
    parts = []
    for pre, kind, p, k in _plan(keys):
        v = row[k]
        if v is None:
            parts.append(pre + "null")
        elif type(v) is bytes:
            parts.append(pre + v.decode("utf-8"))
        elif kind is NUM:
            parts.append(pre + repr(v / p))
        elif kind is INT:
            parts.append(pre + repr(v))
        elif kind is LABEL or kind is FLAGS:
            parts.append(pre + jtext(v, kind))
        elif kind is BOOL:
            parts.append(pre + ("true" if v == 1 else "false"))
        else:
            parts.append(pre + '"' + iso_seconds(v if kind is TIME else start + v) + '"')
    prev = row["prev"]
    return (
        '{"body":{'
        + ",".join(parts)
        + '},"prev":'
        + ("null" if prev is None else '"' + b64u_encode(bytes(prev)) + '"')
        + ',"seq":'
        + repr(seq)
        + ',"site":'
        + jtext(row["site"], LABEL)
        + ',"stream":'
        + json.dumps(stream, ensure_ascii=False)
        + ',"ts":"'
        + iso_ms(start * 1000 + row["ts"])
        + '","v":'
        + repr(row["v"])
        + "}"
    )


def label_json(text: str, kind: str) -> str:
    """A label's JSON text: the text, or for ``flags`` the list it joins."""
    if kind == FLAGS:
        return _flags_json(text)
    return json.dumps(text, ensure_ascii=False)


# --- text made by SQLite (export) ---------------------------------------------------------


def sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def csv_text(s: str) -> str:
    """A text as the csv module writes it as one cell of a row of several."""
    import csv  # only for export and the write-time check: not at start-up

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([s, ""])
    return buf.getvalue()[:-2]


def _case(col: str, labels: Mapping[int, str], conv: Callable[[str], str], other: str) -> str:
    if not labels:
        return other
    arms = " ".join(f"WHEN {i} THEN {sql_text(conv(t))}" for i, t in sorted(labels.items()))
    return f"CASE {col} {arms} ELSE {other} END"


def _flags_json(s: str) -> str:
    return json.dumps(s.split(";") if s else [], ensure_ascii=False, separators=(",", ":"))


def _label_json(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def cell_sql(key: str, labels: Mapping[int, str], *, js: bool, alias: str = "f") -> str:
    """The SQL text of one field of a fast row: a CSV cell, or (``js``) a JSON value."""
    kind, dec = KIND[key]
    col = f'{alias}."{key}"'
    null = "'null'" if js else "NULL"
    if kind == NUM:
        s = num_sql(col, dec)
        return f"ifnull({s}, 'null')" if js else s
    if kind == INT:
        return f"ifnull({col}, 'null')" if js else col
    if kind == BOOL:
        return f"CASE {col} WHEN 1 THEN 'true' WHEN 0 THEN 'false' ELSE {null} END"
    if kind == LABEL:
        return _case(col, labels, _label_json if js else csv_text, null)
    if kind == FLAGS:
        return _case(col, labels, _flags_json if js else csv_text, null)
    s = time_sql(f'{alias}."start"', None if kind == TIME else col)
    return f"'\"' || {s} || '\"'" if js else s


def csv_line_sql(cols: Sequence[str], labels: Mapping[int, str]) -> str:
    """One CSV line (with its ``\\n``) of a fast row, columns ``cols`` (a key without a
    column is an empty cell: fast rows never have one)."""
    fmt = ",".join("%s" if c in KIND else "" for c in cols)
    args = [cell_sql(c, labels, js=False) for c in cols if c in KIND]
    if not args:
        return sql_text(fmt + "\n")
    return f"printf({sql_text(fmt + chr(10))}, {', '.join(args)})"


def json_line_sql(shapes: Mapping[int, Sequence[str]], labels: Mapping[int, str]) -> str:
    """The JSON object of a fast row (its keys sorted, as signed), by its shape."""
    arms = []
    for sid, keys in sorted(shapes.items()):
        if not keys or not set(keys) <= KIND.keys():
            continue
        ks = sorted(keys)
        fmt = "{" + ",".join(f"{json.dumps(k)}:%s" for k in ks) + "}"
        args = ", ".join(cell_sql(k, labels, js=True) for k in ks)
        arms.append(f"WHEN {sid} THEN printf({sql_text(fmt)}, {args})")
    if not arms:
        return "NULL"
    return f"CASE f.shape {' '.join(arms)} END"


def check_query(checks: Iterable[tuple[str, Any, str]]) -> tuple[str, list[Any], tuple[str, ...]]:
    """(SQL, parameters, expected row) of the write-time check of a row's SQLite text."""
    cs = list(checks)
    return (
        "SELECT " + ", ".join(e for e, _, _ in cs),
        [p for _, p, _ in cs],
        tuple(x for _, _, x in cs),
    )
