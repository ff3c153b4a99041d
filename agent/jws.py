"""JWS compact serialization (RFC 7515) with Ed25519, and the message envelope.

Written on ``agent.ed25519`` alone (no JOSE library in the agent; Ed25519 through the
libcrypto the interpreter has loaded, else ``cryptography``); any standard JOSE library
verifies what ``Signer.sign`` produces (the tests check with joserfc). Keys are
``agent.ed25519`` keys or ``cryptography``'s Ed25519 keys, interchangeably.

- Protected header: exactly ``{"alg":"Ed25519","kid":KID}`` (RFC 9864 algorithm name),
  serialized as compact JSON in that key order.
- ``kid``: the RFC 7638 JWK thumbprint of the public key (SHA-256, base64url).
- Payload: the envelope as compact JSON with sorted keys, UTF-8. JSON has no NaN or
  Infinity: a non-finite float (e.g. a float32 register reading NaN) is signed as
  ``null``, so every message stays standard JSON that any JOSE library parses, and the
  agent never fails to emit a record because of one bad value. Sorted keys make a
  message's bytes a pure function of its content (handy for tests and debugging);
  verifiers never depend on it (they check the bytes as received).
- ``chain_hash``: base64url(SHA-256(the whole compact JWS as ASCII)), no padding;
  the ``prev`` field of the next message on a chained stream.

``verify`` accepts ``alg`` "Ed25519" and the older RFC 8037 name "EdDSA" (same
algorithm for an Ed25519 key), refuses a ``crit`` header, and raises ``JWSError``
whose message starts with one of: ``malformed``, ``bad_alg``, ``unknown_kid``,
``bad_signature``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from agent.ed25519 import SignKey, VerifyKey, verifies
from agent.finite import finite_or_null
from agent.protocol import CHAINED_STREAMS as CHAINED_STREAMS  # re-exported
from agent.timefmt import rfc3339_ms

ALG = "Ed25519"
ACCEPTED_ALGS = frozenset({"Ed25519", "EdDSA"})
ENVELOPE_VERSION = 1
MAX_COMPACT_LEN = 1 << 20

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class JWSError(ValueError):
    """A message that does not verify; ``str(e)`` is the reason."""


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2)."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u_encode(data) != text:  # non-zero trailing bits: one value, one encoding
        raise ValueError("not canonical base64url")
    return data


def _json(obj: Any, *, sort: bool) -> bytes:
    try:
        text = json.dumps(
            obj, separators=(",", ":"), sort_keys=sort, ensure_ascii=False, allow_nan=False
        )
    except ValueError:  # NaN / Infinity somewhere: JSON has no such numbers
        text = json.dumps(
            finite_or_null(obj),
            separators=(",", ":"),
            sort_keys=sort,
            ensure_ascii=False,
            allow_nan=False,
        )
    return text.encode("utf-8")


def thumbprint(pub: VerifyKey) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 key: required members crv, kty, x."""
    x = b64u_encode(pub.public_bytes_raw())
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": x}
    return b64u_encode(hashlib.sha256(_json(jwk, sort=True)).digest())


def envelope(
    site: str, stream: str, seq: int, prev: str | None, ts: float, body: Any
) -> dict[str, Any]:
    """The signed payload. ``prev`` appears on chained streams (interval, event; null for
    seq 1) and on any other stream only when given."""
    env: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "site": site,
        "stream": stream,
        "seq": seq,
        "ts": rfc3339_ms(ts),
        "body": body,
    }
    if stream in CHAINED_STREAMS or prev is not None:
        env["prev"] = prev
    return env


def chain_hash(compact: str) -> str:
    return b64u_encode(hashlib.sha256(compact.encode("ascii")).digest())


class Signer:
    """Signs payloads with one Ed25519 private key.

    ``key`` and ``public_key`` are the key objects as given: ``agent.ed25519``'s in the
    running agent, ``cryptography``'s in the tools and tests, which use the latter's own
    methods (PEM export), hence ``Any``."""

    def __init__(self, key: SignKey) -> None:
        self.key: Any = key
        self.public_key: Any = key.public_key()
        self.kid = thumbprint(self.public_key)
        self._header_b64 = b64u_encode(_json({"alg": ALG, "kid": self.kid}, sort=False))

    def sign(self, payload: dict[str, Any]) -> str:
        body_b64 = b64u_encode(_json(payload, sort=True))
        signing_input = f"{self._header_b64}.{body_b64}"
        sig = self.key.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64u_encode(sig)}"


def parse(compact: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Split and decode without verifying: (header, payload, signing input, signature)."""
    if len(compact) > MAX_COMPACT_LEN:
        raise JWSError("malformed: too large")
    parts = compact.split(".")
    if len(parts) != 3:
        raise JWSError("malformed: not a JWS compact serialization")
    try:
        header = json.loads(b64u_decode(parts[0]))
        payload = json.loads(b64u_decode(parts[1]))
        sig = b64u_decode(parts[2])
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError) as e:
        raise JWSError("malformed: not base64url JSON") from e
    if not isinstance(header, dict):
        raise JWSError("malformed: header is not a JSON object")
    if not isinstance(payload, dict):
        raise JWSError("malformed: payload is not a JSON object")
    return header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), sig


def header_kid(compact: str) -> str | None:
    """The kid of a message's header, or None when unreadable."""
    try:
        header, _, _, _ = parse(compact)
    except JWSError:
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def verify(compact: str, keys: Mapping[str, VerifyKey]) -> dict[str, Any]:
    """Verify a compact JWS against the keys (kid -> key); returns the payload."""
    header, payload, signing_input, sig = parse(compact)
    alg = header.get("alg")
    if alg not in ACCEPTED_ALGS:
        raise JWSError(f"bad_alg: {str(alg)[:20]!r}")
    if "crit" in header:
        raise JWSError("malformed: crit header not supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise JWSError(f"unknown_kid: {str(kid)[:64]!r}")
    if len(sig) != 64:
        raise JWSError("bad_signature: wrong length")
    if not verifies(keys[kid], sig, signing_input):
        raise JWSError("bad_signature")
    return payload
