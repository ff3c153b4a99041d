"""Time text: the one RFC 3339 formatter pair and the one RFC 3339 / ISO 8601 parser. Pure.

Two formats are in use and both are part of the contract:
- `rfc3339`: records and event bodies; whole seconds (``...:05Z``), milliseconds only
  when the time has a fraction (``...:05.250Z``).
- `rfc3339_ms`: the signed envelope's ``ts``; always milliseconds (``...:05.000Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float) -> str:
    """Unix seconds to RFC 3339 UTC with Z (millisecond precision when fractional)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(ts: float) -> str:
    """Unix seconds to RFC 3339 UTC with milliseconds and ``Z``, always."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(s: object, *, naive: bool = True) -> float | None:
    """An RFC 3339 / ISO 8601 time (``Z`` or an offset) as Unix seconds, or None when `s`
    is not such a string. A time without an offset is read as UTC, or refused (None)
    when `naive` is False."""
    if not isinstance(s, str):
        return None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        if not naive:
            return None
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def to_unix(s: str) -> float:
    """Like `parse_time`, but a bad time raises ValueError."""
    t = parse_time(s)
    if t is None:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    return t
