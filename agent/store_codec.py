"""Pure codecs of the store: the compact, byte-exact form of a signed message (see
``agent.store``), raw-sample blocks, and the row types the store hands out."""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Sequence
from typing import Any

from agent.jws import b64u_decode, b64u_encode
from agent.store_schema import StoreError
from agent.timefmt import to_unix
from drivers.dataclass_lite import frozen

CODEC_VERBATIM = 0  # payload column = the whole compact JWS as ASCII
CODEC_DEFLATE_DICT1 = 1  # payload = raw deflate of the envelope bytes, preset dictionary 1
SAMPLE_FORMAT = 1


@frozen
class SampleRow:
    device: str
    ts: float | None
    mono: float
    boot: int
    synced: bool
    ok: bool
    values: dict[str, float]
    flags: list[str]


@frozen
class StoredMessage:
    id: int
    stream: str
    seq: int
    topic: str
    qos: int
    retain: bool
    payload: str  # the compact JWS, byte-exact


@frozen
class PackedJws:
    header: str  # protected header segment (base64url), or "" for verbatim
    codec: int
    payload: bytes
    sig: bytes


def pack_jws(compact: str, zdict: bytes) -> PackedJws:
    """The compact form of a compact JWS; ``unpack_jws`` gives the very same string back
    (checked here: anything that would not round-trip is kept verbatim)."""
    parts = compact.split(".")
    if len(parts) == 3:
        try:
            raw_payload = b64u_decode(parts[1])
            sig = b64u_decode(parts[2])
        except (ValueError, binascii.Error):
            pass
        else:
            c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
            packed = PackedJws(
                parts[0], CODEC_DEFLATE_DICT1, c.compress(raw_payload) + c.flush(), sig
            )
            if (
                unpack_jws(packed.header, packed.codec, packed.payload, packed.sig, zdict)
                == compact
            ):
                return packed
    return PackedJws("", CODEC_VERBATIM, compact.encode("utf-8"), b"")


def _inflate(data: bytes, zdict: bytes) -> bytes:
    d = zlib.decompressobj(-15, zdict)
    return d.decompress(data) + d.flush()


def unpack_jws(header: str, codec: int, payload: bytes, sig: bytes, zdict: bytes) -> str:
    if codec == CODEC_VERBATIM:
        return payload.decode("utf-8")
    if codec == CODEC_DEFLATE_DICT1:
        return f"{header}.{b64u_encode(_inflate(payload, zdict))}.{b64u_encode(sig)}"
    raise StoreError(f"unknown message codec {codec}")


def envelope_of(header: str, codec: int, payload: bytes, zdict: bytes) -> dict[str, Any]:
    """The signed envelope (JWS payload) of a stored message, without rebuilding the JWS."""
    if codec == CODEC_VERBATIM:
        seg = payload.decode("utf-8").split(".")[1]
        env = json.loads(b64u_decode(seg))
    else:
        env = json.loads(_inflate(payload, zdict))
    if not isinstance(env, dict):
        raise StoreError("stored payload is not a JSON object")
    return env


def start_key(rec: dict[str, Any]) -> int:
    """The record's period start as integer Unix seconds (the ``intervals`` key)."""
    s = rec["start"]
    if isinstance(s, int | float):
        return int(s)
    return int(to_unix(str(s)))


def encode_samples(rows: Sequence[SampleRow]) -> bytes:
    data = [[r.ts, r.mono, r.boot, int(r.synced), int(r.ok), r.values, list(r.flags)] for r in rows]
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode("utf-8"), 6)


def decode_samples(device: str, blob: bytes) -> list[SampleRow]:
    out: list[SampleRow] = []
    for ts, mono, boot, synced, ok, values, flags in json.loads(zlib.decompress(blob)):
        out.append(
            SampleRow(
                device=device,
                ts=ts,
                mono=mono,
                boot=boot,
                synced=bool(synced),
                ok=bool(ok),
                values={str(k): float(v) for k, v in values.items()},
                flags=[str(f) for f in flags],
            )
        )
    return out


def floor_int(x: float) -> int:
    i = int(x)
    return i - 1 if i > x else i


def ceil_int(x: float) -> int:
    i = int(x)
    return i + 1 if i < x else i
