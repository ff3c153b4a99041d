"""The interval records in the local store (``agent.store``): the typed-column form of a
signed record (``agent.store_fields``: written when its rebuilt bytes equal the signed
ones, read back byte-exactly), and the read side: record bodies of a time range (streamed),
the union of their keys, the count, and the export's text made by SQLite. A base class of
``Store``; the writes (``commit_intervals``) stay with the signed messages."""

from __future__ import annotations

import binascii
import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from agent import store_fields as sf
from agent.jws import b64u_decode, b64u_encode
from agent.store_bulk import envelopes_of
from agent.store_codec import ceil_int, floor_int
from agent.store_core import StoreCore
from agent.store_schema import StoreError

CODEC_FIELDS = 2  # payload empty: the envelope lives in ``interval_fields`` (schema 3)
_INSERT_FIELDS = (
    "INSERT INTO interval_fields(msg, "
    + ", ".join(f'"{c}"' for c in sf.COLUMNS)
    + ") VALUES ("
    + ", ".join("?" * (len(sf.COLUMNS) + 1))
    + ")"
)
_BATCH = 1024


class IntervalQueries(StoreCore):
    """Queries over ``intervals`` joined with their signed ``messages``."""

    # --- lookups ----------------------------------------------------------------------------

    def _shape_id(self, c: sqlite3.Connection, keys: list[str]) -> int:
        k = json.dumps(keys, separators=(",", ":"))
        i: int | None = self._staged_get(self._shapes, k)
        if i is None:
            i = int(c.execute("INSERT INTO shapes(keys) VALUES (?)", (k,)).lastrowid or 0)
            self._stage(self._shapes, k, i)
        return i

    def _label_id(self, c: sqlite3.Connection, text: str) -> int:
        i: int | None = self._staged_get(self._labels, text)
        if i is None:
            i = int(c.execute("INSERT INTO labels(text) VALUES (?)", (text,)).lastrowid or 0)
            self._stage(self._labels, text, i)
            self._stage(self._label_text, i, text)
        return i

    def _text_of(self, i: int) -> str:
        t: str | None = self._staged_get(self._label_text, i)
        if t is None:  # stored after this (read-only) store was opened
            row = self.conn.execute("SELECT text FROM labels WHERE id = ?", (i,)).fetchone()
            if row is None:
                raise StoreError(f"label {i} is not stored")
            t = self._label_text[i] = str(row[0])
        return t

    def _label_json(self, i: int, kind: str) -> str:
        got = self._json_text.get((i, kind))
        if got is None:
            got = sf.label_json(self._text_of(i), kind)
            if i in self._label_text:  # committed: never changes
                self._json_text[(i, kind)] = got
        return got

    def _sorted_keys(self, shape: int) -> tuple[str, ...]:
        got = self._shape_sorted.get(shape)
        if got is not None:
            return got
        for cache, k, v in self._staged:  # made by the open transaction: not cached
            if cache is self._shapes and v == shape:
                return tuple(sorted(json.loads(k)))
        row = self.conn.execute("SELECT keys FROM shapes WHERE id = ?", (shape,)).fetchone()
        if row is None:
            raise StoreError(f"shape {shape} is not stored")
        got = self._shape_sorted[shape] = tuple(sorted(json.loads(row[0])))
        return got

    # --- the typed-column form ----------------------------------------------------------------

    def _fields_form(
        self, c: sqlite3.Connection, compact: str, stream: str, seq: int, shape: int
    ) -> tuple[str, bytes, sf.Encoded, int] | None:
        """(header segment, raw signature, columns, shape) of a signed interval record, or
        None when its rebuilt compact JWS would not be byte-exact (it keeps the blob)."""
        parts = compact.split(".")
        if len(parts) != 3:
            return None
        try:
            raw = b64u_decode(parts[1])
            sig = b64u_decode(parts[2])
            env = json.loads(raw)
        except (ValueError, binascii.Error, RecursionError):
            return None
        if type(env) is not dict or env.get("stream") != stream or env.get("seq") != seq:
            return None
        try:
            enc = sf.encode(env, lambda t: self._label_id(c, t))
            if set(self._sorted_keys(shape)) != set(env["body"]):
                shape = self._shape_id(c, sorted(env["body"]))
            row = dict.fromkeys(sf.COLUMNS)
            row.update(enc.values)
            keys = self._sorted_keys(shape)
            again = sf.payload_text(row, stream, seq, keys, self._label_json).encode("utf-8")
        except (sf.NoFit, ValueError, TypeError, StoreError, UnicodeError):
            return None
        if again != raw or f"{parts[0]}.{b64u_encode(again)}.{b64u_encode(sig)}" != compact:
            return None
        if enc.fast:  # the very expressions the export uses give Python's text
            sql, args, want = sf.check_query(enc.checks)
            enc.fast = tuple(c.execute(sql, args).fetchone()) == want
        return parts[0], sig, enc, shape

    def _insert_fields(self, c: sqlite3.Connection, mid: int, enc: sf.Encoded, shape: int) -> None:
        v = enc.values
        row = [int(enc.fast), shape, *(v.get(k) for k in sf.COLUMNS[2:])]
        c.execute(_INSERT_FIELDS, (mid, *row))

    def _fields_rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), _BATCH):
            part = ids[i : i + _BATCH]
            sql = (
                f"SELECT f.msg, {sf.SELECT_COLUMNS} FROM interval_fields f"
                f" WHERE f.msg IN ({', '.join('?' * len(part))})"
            )
            for mid, *vals in self.conn.execute(sql, part):
                out[int(mid)] = dict(zip(sf.COLUMNS, vals, strict=True))
        return out

    def _compact_of_fields(
        self, header: str, stream: str, seq: int, sig: bytes, row: dict[str, Any] | None
    ) -> str:
        if row is None:
            raise StoreError(f"{stream} seq {seq}: its fields are not stored")
        keys = self._sorted_keys(int(row["shape"]))
        raw = sf.payload_text(row, stream, seq, keys, self._label_json).encode("utf-8")
        return f"{header}.{b64u_encode(raw)}.{b64u_encode(sig)}"

    def _body_of_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return sf.decode_body(row, self._sorted_keys(int(row["shape"])), self._text_of)

    def _bodies(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Record bodies by message id, whichever form they are stored in."""
        out: dict[int, dict[str, Any]] = {}
        fields = self._fields_rows(ids) if self.schema_version >= 3 else {}
        for mid, row in fields.items():
            out[mid] = self._body_of_fields(row)
        rest = [i for i in ids if i not in fields]
        for i in range(0, len(rest), _BATCH):
            part = rest[i : i + _BATCH]
            marks = ", ".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT id, codec, payload FROM messages WHERE id IN ({marks})", part
            ).fetchall()
            for (mid, _c, _p), env in zip(
                rows, envelopes_of([(c, p) for _, c, p in rows], self._zd()), strict=True
            ):
                body = env.get("body")
                if isinstance(body, dict):
                    out[int(mid)] = body
        return out

    # --- reading records ----------------------------------------------------------------------

    def _range_sql(self, select: str, device: str | None) -> str:
        sql = f"{select} WHERE i.start >= ? AND i.start < ?"
        if device is not None:
            sql += " AND i.device = ?"
        return sql + " ORDER BY i.device, i.start"

    def iter_intervals(
        self, start: float, end: float, device: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Record bodies whose period start lies in [start, end), by device then start;
        streamed (three years of records never sit in memory at once)."""
        self._check()
        args: list[Any] = [float(start), float(end)]
        if device is not None:
            args.append(device)
        v3 = self.schema_version >= 3
        sel = "SELECT m.codec, m.payload" + (f", {sf.SELECT_COLUMNS}" if v3 else "")
        sel += " FROM intervals i JOIN messages m ON m.id = i.msg"
        if v3:
            sel += " LEFT JOIN interval_fields f ON f.msg = i.msg"
        cur = self.conn.execute(self._range_sql(sel, device), args)
        zd = self._zd()
        cols = sf.COLUMNS
        # in batches; blobs decoded in bulk (agent.store_bulk), fields straight from columns
        while rows := cur.fetchmany(512):
            blobs = [(r[0], r[1]) for r in rows if r[0] != CODEC_FIELDS]
            envs = iter(envelopes_of(blobs, zd)) if blobs else iter(())
            for r in rows:
                if r[0] == CODEC_FIELDS:
                    yield self._body_of_fields(dict(zip(cols, r[2:], strict=True)))
                    continue
                body = next(envs).get("body")
                if isinstance(body, dict):
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
        args: list[Any] = [floor_int(start), ceil_int(end)]
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

    def iter_export(
        self, start: float, end: float, fmt: str, cols: Sequence[str], device: str | None = None
    ) -> Iterator[list[str | dict[str, Any]]]:
        """The records of ``iter_intervals`` in batches, each record as the text the export
        writes for it (a CSV line with its newline for ``cols``, or a JSON object), made by
        SQLite; a record SQLite cannot write exactly comes as its body (a dict) instead."""
        self._check()
        args: list[Any] = [float(start), float(end)]
        if device is not None:
            args.append(device)
        if self.schema_version < 3:
            line, join = "i.msg", ""
        else:
            # labels and shapes with the newest row they cover, in one statement (one
            # snapshot): a row stored later may use a label not in this list
            labels: dict[int, str] = {}
            shapes: dict[int, list[str]] = {}
            top = 0
            for m, kind, i, t in self.conn.execute(
                "SELECT (SELECT ifnull(max(msg), 0) FROM interval_fields), 'l', id, text"
                " FROM labels UNION ALL SELECT NULL, 's', id, keys FROM shapes"
            ):
                if kind == "l":
                    labels[int(i)] = str(t)
                    top = int(m)
                else:
                    shapes[int(i)] = json.loads(t)
            text = (
                sf.csv_line_sql(cols, labels) if fmt == "csv" else sf.json_line_sql(shapes, labels)
            )
            line = f"CASE WHEN f.fast = 1 AND f.msg <= {top} THEN {text} ELSE i.msg END"
            join = " LEFT JOIN interval_fields f ON f.msg = i.msg"
        cur = self.conn.execute(
            self._range_sql(f"SELECT {line} FROM intervals i{join}", device), args
        )
        while rows := cur.fetchmany(_BATCH):
            got: list[str | int] = [r for (r,) in rows]
            slow = [r for r in got if type(r) is int]
            if not slow:
                yield got  # type: ignore[misc]  # all text
                continue
            bodies = self._bodies(slow)
            yield [
                r if type(r) is str else bodies[int(r)]
                for r in got
                if type(r) is str or int(r) in bodies
            ]
