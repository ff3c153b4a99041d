"""The outbox as the uplink's drain reads it: each unsent message with its compact JWS
already as the bytes to publish (``Store.unsent_wire``), rebuilt straight into bytes.

Same messages, same order and byte-for-byte the same payload as ``Store.unsent`` (checked
in tests/test_uplink_store.py); cheaper per message (no str built and encoded again, no
frozen dataclass), which counts on the store's thread while the event loop publishes.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from agent.store_codec import CODEC_DEFLATE_DICT1, CODEC_VERBATIM
from agent.store_schema import StoreError

_URLSAFE = bytes.maketrans(b"+/", b"-_")


class WireMessage:
    """One unsent stored message (``agent.uplink.Outgoing``) with ``data``, the payload's
    bytes."""

    __slots__ = ("data", "id", "qos", "retain", "seq", "stream", "topic")

    def __init__(
        self, id: int, stream: str, seq: int, topic: str, qos: int, retain: bool, data: bytes
    ) -> None:
        self.id = id
        self.stream = stream
        self.seq = seq
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.data = data

    @property
    def payload(self) -> str:
        return self.data.decode("ascii")


def _b64u(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


def wire_jws(header: bytes, codec: int, payload: bytes, sig: bytes, zdict: bytes) -> bytes:
    """``unpack_jws(...).encode("ascii")``, built as bytes."""
    if codec == CODEC_DEFLATE_DICT1:
        d = zlib.decompressobj(-15, zdict)
        raw = d.decompress(payload)
        if not d.eof:  # a whole stream is out already (flush would add nothing)
            raw += d.flush()
        return b".".join((header, _b64u(raw), _b64u(sig)))
    if codec == CODEC_VERBATIM:
        return payload.decode("utf-8").encode("ascii")
    raise StoreError(f"unknown message codec {codec}")


# the columns ``wire_messages`` takes: id, stream, seq, topic id, qos, retain, header id,
# codec, payload (the compressed one of a record kept as fields, until delivered), sig
Row = tuple[int, str, int, int, int, int, int, int, bytes, bytes | None]


def wire_messages(
    rows: Sequence[Row],
    topics: dict[int, str],
    heads: dict[int, str],
    zdict: bytes,
    fields_codec: int,
    rebuild: Callable[[Row], bytes],
) -> list[WireMessage]:
    """The messages of ``rows`` with their payloads as bytes; ``rebuild`` makes those of a
    record kept as its fields only (codec ``fields_codec`` without a payload).

    The loop of ``wire_jws`` written out (this runs on the store's thread while the event
    loop publishes): the stream is inflated with one call when it is whole (each call into
    zlib lets the GIL go, and getting it back waits for the event loop's thread)."""
    hb: dict[int, bytes] = {}
    out: list[WireMessage] = []
    append = out.append
    inflater = zlib.decompressobj
    b64 = binascii.b2a_base64
    join = b".".join
    deflated = CODEC_DEFLATE_DICT1
    for row in rows:
        mid, stream, seq, topic, qos, retain, hdr, codec, payload, sig = row
        h = hb.get(hdr)
        if h is None:
            h = hb[hdr] = heads.get(hdr, "").encode("ascii")
        if codec == deflated or (codec == fields_codec and payload):
            d = inflater(-15, zdict)
            raw = d.decompress(payload)
            if not d.eof:
                raw += d.flush()
            data = join(
                (
                    h,
                    b64(raw, newline=False).translate(_URLSAFE).rstrip(b"="),
                    b64(sig or b"", newline=False).translate(_URLSAFE).rstrip(b"="),
                )
            )
        elif codec == fields_codec:
            data = rebuild(row)
        else:
            data = wire_jws(h, codec, payload, sig or b"", zdict)
        append(WireMessage(mid, stream, seq, topics[topic], qos, bool(retain), data))
    return out


def id_runs(ids: Sequence[Any]) -> list[tuple[int, int]]:
    """The distinct ids as runs of consecutive integers, ``(first, last)``, ascending:
    ``id BETWEEN first AND last`` over the runs selects exactly these ids."""
    runs: list[tuple[int, int]] = []
    first = last = None
    for i in sorted({int(x) for x in ids}):
        if last is not None and i == last + 1:
            last = i
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = i
    if first is not None and last is not None:
        runs.append((first, last))
    return runs
