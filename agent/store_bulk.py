"""Bulk decoding of stored messages for the read-heavy tools (export): a batch of stored
payloads is inflated row by row and then parsed as ONE JSON array, which is several times
faster than one ``json.loads`` per message. Pure."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from agent.store_codec import CODEC_DEFLATE_DICT1, envelope_of


def _no_constant(_: str) -> None:
    return None  # NaN/Infinity never come from the signer (allow_nan=False); read as null


def envelopes_of(rows: Sequence[tuple[int, bytes]], zdict: bytes) -> list[dict[str, Any]]:
    """The signed envelopes of stored (codec, payload) rows, in order. A batch that does not
    parse as exactly one JSON object per row is decoded row by row instead (that raises the
    store's usual errors for a bad row)."""
    parts: list[bytes] = []
    for codec, payload in rows:
        if codec != CODEC_DEFLATE_DICT1:
            return [envelope_of("", c, p, zdict) for c, p in rows]
        d = zlib.decompressobj(-15, zdict)
        parts.append(d.decompress(payload) + d.flush())
    try:
        envs = json.loads(b"[" + b",".join(parts) + b"]", parse_constant=_no_constant)
    except ValueError:
        envs = None
    if (
        not isinstance(envs, list)
        or len(envs) != len(rows)
        or not all(type(e) is dict for e in envs)
    ):
        return [envelope_of("", c, p, zdict) for c, p in rows]
    return envs
