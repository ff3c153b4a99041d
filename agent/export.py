"""`dh-agent export` and `dh-agent status` over the local store.

Export: the interval records (contract section 5 bodies, exactly as signed) whose period
start lies in [from, to), ordered by device then start.

- ``csv``: a header, then one row per record. Columns are the union of the records'
  keys in a fixed order (``COLUMNS``: identity, counters, averages, limits, dp, actuator),
  then any other key alphabetically. ``flags`` are joined with ``;``; a missing or null
  value is an empty cell; booleans are ``true``/``false``; numbers as in the signed JSON.
  Lines end with ``\\n``.
- ``json``: one JSON array, one record per line inside it (so ``json.load`` reads the
  whole and line tools see one record per line); keys as signed.

Both stream the records from the store: three years of hourly records for a few devices
never sit in memory at once.

Status: boot count, last publish (the broker's last acknowledgement of a stored message),
unsent backlog per stream, stored record count, the newest raw sample of each device, and
open alarms. An alarm is open when its start event has no later matching end event for
the same device (pairs: ``X`` / ``X_end``, ``X_start`` / ``X_end``, ``device_offline`` /
``device_online``, ``flow_limit_enforced`` / ``flow_limit_released``). One-shot reports
(``flow_limit_exceeded``, ``cooling_low`` over a billing month, config and key events)
are not alarms.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from agent.store import SampleRow

COLUMNS: tuple[str, ...] = (
    "device",
    "role",
    "start",
    "end",
    "period_s",
    "samples",
    "flags",
    "energy_start_kwh",
    "energy_end_kwh",
    "energy_kwh",
    "volume_start_m3",
    "volume_end_m3",
    "volume_m3",
    "flow_avg_m3h",
    "flow_max_m3h",
    "power_avg_kw",
    "power_max_kw",
    "supply_avg_c",
    "return_avg_c",
    "cooling_avg_c",
    "flow_limit_m3h",
    "power_limit_kw",
    "limit_exceeded",
    "dp_min_kpa",
    "dp_avg_kpa",
    "dp_max_kpa",
    "position_avg_pct",
    "limit_min_pct",
)
_RANK = {k: i for i, k in enumerate(COLUMNS)}

# end kind -> start kind (besides the generic X_end -> X / X_start)
END_OF: dict[str, str] = {
    "device_online": "device_offline",
    "flow_limit_released": "flow_limit_enforced",
}
START_KINDS_EXTRA = frozenset({"device_offline", "limiter_failsafe", "flow_limit_enforced"})


class RecordSource(Protocol):
    """What an export needs from ``agent.store.Store``."""

    def interval_keys(self, start: float, end: float, device: str | None = None) -> list[str]: ...
    def iter_intervals(
        self, start: float, end: float, device: str | None = None
    ) -> Iterable[dict[str, Any]]: ...


class StatusSource(Protocol):
    def boot(self) -> int: ...
    def last_publish(self) -> float | None: ...
    def backlog(self) -> dict[str, int]: ...
    def last_samples(self) -> dict[str, SampleRow]: ...
    def event_bodies(self, from_seq: int = 1) -> list[dict[str, Any]]: ...
    def interval_count(self) -> int: ...


# --- pure -------------------------------------------------------------------------------------


def column_order(keys: Iterable[str]) -> list[str]:
    """The CSV columns for records with these keys: known ones in ``COLUMNS`` order, then
    the rest alphabetically."""
    ks = set(keys)
    return sorted(ks, key=lambda k: (0, _RANK[k], "") if k in _RANK else (1, 0, k))


def csv_cell(v: Any) -> Any:
    t = type(v)
    if t is str or t is int:
        return v
    if t is float:
        return repr(v) if math.isfinite(v) else ""
    if v is None:
        return ""
    if t is bool:
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        try:
            return ";".join(v)  # all text (the flags); anything else raises
        except TypeError:
            return json.dumps(v, separators=(",", ":"))
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


_PLAIN = frozenset({str, int, float, type(None)})  # the csv module writes these as csv_cell does


def csv_rows(records: Iterable[Mapping[str, Any]], cols: Sequence[str]) -> Iterator[list[Any]]:
    """The CSV rows of records, cells as ``csv_cell`` makes them, for records as the store
    decodes them (every float finite: the signer refuses NaN and Infinity, the decoder
    reads them as null). Fast path: plain values (text, integers, floats, null) go to the
    csv writer as they are (it writes a float as its repr and null as an empty cell); only
    the columns seen holding anything else (flags lists, booleans) go through ``csv_cell``."""
    special: list[int] = []
    cell = csv_cell
    plain = _PLAIN.issuperset
    for rec in records:
        row = list(map(rec.get, cols))
        for i in special:
            row[i] = cell(row[i])
        if not plain(map(type, row)):
            odd = [i for i, v in enumerate(row) if type(v) not in _PLAIN]
            for i in odd:
                row[i] = cell(row[i])
            special.extend(odd)
        yield row


def _start_kind(kind: str) -> str | None:
    """The start kind an end kind closes, or None when ``kind`` is no end."""
    if kind in END_OF:
        return END_OF[kind]
    if kind.endswith("_end"):
        return kind[: -len("_end")]
    return None


def is_alarm_start(body: Mapping[str, Any]) -> bool:
    kind = str(body.get("kind", ""))
    if body.get("basis") == "billing_period":  # a monthly report, never ended
        return False
    if kind in START_KINDS_EXTRA:
        return True
    return kind.endswith(("_start", "_low", "_high"))


def open_alarms(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alarms started and not ended, in event order: for each (device, start kind) the
    last start counts, and any later matching end closes it."""
    active: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in events:
        kind = str(ev.get("kind", ""))
        dev = str(ev.get("device", ""))
        start = _start_kind(kind)
        if start is not None:  # X_end closes X or X_start
            active.pop((dev, start), None)
            active.pop((dev, start + "_start"), None)
            continue
        if is_alarm_start(ev):
            active.pop((dev, kind), None)  # re-insert: keep event order
            active[(dev, kind)] = dict(ev)
    return list(active.values())


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    t = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{t} ({_ago(now - ts)})"


def _ago(s: float) -> str:
    if s < 0:
        return "in the future"
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} d ago"


def _num(v: float) -> str:
    return f"{v:.6g}"


def format_status(
    *,
    now: float,
    boot: int,
    last_publish: float | None,
    backlog: Mapping[str, int],
    records: int,
    last: Mapping[str, SampleRow],
    alarms: Sequence[Mapping[str, Any]],
) -> str:
    lines = [f"boot: {boot}", f"last publish: {_when(last_publish, now)}"]
    if any(backlog.values()):
        lines.append("backlog: " + ", ".join(f"{s} {n}" for s, n in sorted(backlog.items()) if n))
    else:
        lines.append("backlog: nothing unsent")
    lines.append(f"interval records: {records}")
    if last:
        lines.append("last readings:")
        for dev in sorted(last):
            r = last[dev]
            vals = " ".join(f"{k}={_num(v)}" for k, v in sorted(r.values.items()))
            state = "ok" if r.ok else "FAILED"
            flags = f" [{';'.join(r.flags)}]" if r.flags else ""
            lines.append(f"  {dev}: {_when(r.ts, now)} {state}{flags} {vals}".rstrip())
    else:
        lines.append("last readings: none stored")
    if alarms:
        lines.append(f"open alarms: {len(alarms)}")
        for a in alarms:
            parts = [str(a.get("kind")), str(a.get("device", "")), f"since {a.get('time', '?')}"]
            parts += [f"{k}={a[k]}" for k in ("value", "threshold") if a.get(k) is not None]
            lines.append("  " + " ".join(p for p in parts if p))
    else:
        lines.append("open alarms: none")
    return "\n".join(lines)


# --- I/O edges --------------------------------------------------------------------------------


def export_records(
    store: RecordSource,
    start: float,
    end: float,
    fmt: str,
    out: TextIO,
    device: str | None = None,
) -> int:
    """Write the records whose period start lies in [start, end) as ``csv`` or ``json``;
    returns how many."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"unknown export format {fmt!r} (csv or json)")
    cols = column_order(store.interval_keys(start, end, device)) if fmt == "csv" else []
    texts = getattr(store, "iter_export", None)
    if texts is not None:  # the store writes the text of most records itself
        batches: Iterable[list[Any]] = texts(start, end, fmt, cols, device)
    else:
        recs = iter(store.iter_intervals(start, end, device))
        batches = iter(lambda: list(itertools.islice(recs, 1024)), [])
    if fmt == "csv":
        return _write_csv(batches, cols, out)
    return _write_json(batches, out)


def _write_csv(batches: Iterable[list[Any]], cols: list[str], out: TextIO) -> int:
    """A batch holds each record as its CSV line, or as its body (a dict) to format here."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    n = 0
    for batch in batches:
        n += len(batch)
        try:
            out.write("".join(batch))
        except TypeError:  # bodies among the lines: keep the order
            for part in _runs(batch):
                if isinstance(part, str):
                    out.write(part)
                else:
                    w.writerows(csv_rows(part, cols))
    return n


def _write_json(batches: Iterable[list[Any]], out: TextIO) -> int:
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    out.write("[")
    n = 0
    for batch in batches:
        if not batch:
            continue
        out.write(",\n" if n else "\n")
        out.write(",\n".join(r if isinstance(r, str) else dumps(r) for r in batch))
        n += len(batch)
    out.write("\n]\n" if n else "]\n")
    return n


def _runs(batch: list[Any]) -> Iterator[str | list[dict[str, Any]]]:
    """A mixed batch as runs: the text of consecutive lines, or consecutive bodies."""
    text: list[str] = []
    recs: list[dict[str, Any]] = []
    for r in batch:
        if isinstance(r, str):
            if recs:
                yield recs
                recs = []
            text.append(r)
        else:
            if text:
                yield "".join(text)
                text = []
            recs.append(r)
    if text:
        yield "".join(text)
    if recs:
        yield recs


def status_summary(store: StatusSource, now: float) -> str:
    return format_status(
        now=now,
        boot=store.boot(),
        last_publish=store.last_publish(),
        backlog=store.backlog(),
        records=store.interval_count(),
        last=store.last_samples(),
        alarms=open_alarms(store.event_bodies()),
    )
