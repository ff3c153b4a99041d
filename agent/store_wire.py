"""The outbox as the uplink's drain reads it: each unsent message with its compact JWS
already as the bytes to publish (``Store.unsent_wire``), rebuilt straight into bytes.

Same messages, same order and byte-for-byte the same payload as ``Store.unsent`` (checked
in tests/test_uplink_store.py); cheaper per message (no str built and encoded again, no
frozen dataclass), which counts on the store's thread while the event loop publishes.
"""

from __future__ import annotations

import binascii
import zlib

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
        return b".".join((header, _b64u(d.decompress(payload) + d.flush()), _b64u(sig)))
    if codec == CODEC_VERBATIM:
        return payload.decode("utf-8").encode("ascii")
    raise StoreError(f"unknown message codec {codec}")
