"""Head-end side verification: ``dh-agent verify``.

``Checker`` is pure (no I/O): one call per received MQTT message, one JSON-able result:
``{"ok": bool, "reason": str, "topic", "stream", "seq", "kid", "ts", "retained"}``.

Checks, in order: JWS (alg, kid among the given public keys, Ed25519 signature), the
envelope (``v`` = 1, ``site`` = the site, ``stream`` matching the topic, ``seq`` >= 1,
``ts`` RFC 3339 UTC), then continuity per stream, whatever key signed it (a gap or a
broken chain across a key rotation is reported like any other):

- ``interval`` / ``event`` (stored, chained): ``seq`` N follows N-1 and ``prev`` is
  base64url(SHA-256) of message N-1 as received; seq 1 has ``prev`` null. A seq
  seen before is ``duplicate`` (ok) if byte-identical, else ``seq_reused`` (not ok).
  A jump past the next seq is a ``gap`` (not ok: messages are missing); a message that
  later fills the gap (``resend``) is ok when it chains with its neighbours. The first
  message of a stream seen in a session cannot be chain-checked backwards (``ok``).
- other streams: ``seq`` strictly increasing (gaps allowed: telemetry may drop); a
  byte-identical repeat is ``duplicate`` (ok), anything else at or below the last seq is
  ``seq_not_increasing`` (not ok).

Keys: agent data (every topic but ``config/set`` and ``cmd``) verifies only with agent keys,
operator messages only with ``operator_keys`` (``wrong_signer`` when an operator key signs
agent data; without operator keys, operator messages are ``unchecked``, ok). An agent key
beyond the ones given is accepted only after its announcement: a verified ``key_rotated``
event (``new_kid``, ``new_pubkey``) signed by an accepted agent key, and on the ``event``
stream only for seqs after the announcement's.

Reasons that start a not-ok result: ``malformed``, ``bad_alg``, ``unknown_kid``,
``bad_signature``, ``bad_envelope``, ``wrong_site``, ``wrong_stream``, ``gap``,
``chain_broken``, ``bad_prev``, ``seq_reused``, ``seq_not_increasing``, ``wrong_signer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.jws import CHAINED_STREAMS, JWSError, chain_hash, header_kid, thumbprint, verify
from agent.keys import load_public
from agent.protocol import TOPIC_STREAMS

OPERATOR_TOPICS = frozenset({"config/set", "cmd"})
MAX_REMEMBERED = 100_000
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class StreamState:
    max_seq: int = 0
    hashes: dict[int, str] = field(default_factory=dict)  # seq -> chain_hash of the message
    prevs: dict[int, str | None] = field(default_factory=dict)  # seq -> its prev field

    def remember(self, seq: int, h: str, prev: str | None) -> None:
        self.hashes[seq] = h
        self.prevs[seq] = prev
        self.max_seq = max(self.max_seq, seq)
        if len(self.hashes) > MAX_REMEMBERED:
            for old in sorted(self.hashes)[: len(self.hashes) // 10]:
                self.hashes.pop(old, None)
                self.prevs.pop(old, None)


class Checker:
    def __init__(
        self,
        site: str,
        keys: Mapping[str, Ed25519PublicKey],
        topic_prefix: str = "dh/v1",
        operator_keys: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.site = site
        self.keys = dict(keys)  # agent keys: the given ones and the announced ones
        self.operator_keys = dict(operator_keys or {})
        self.announced: dict[str, int] = {}  # kid -> event seq of its announcement
        self.base = f"{topic_prefix}/{site}/"
        self.streams: dict[str, StreamState] = {}
        self.counts = {"ok": 0, "bad": 0}
        self.last_body: Any = None  # the body of the last message checked, once verified

    def check(self, topic: str, payload: bytes, retained: bool = False) -> dict[str, Any]:
        res: dict[str, Any] = {
            "ok": False,
            "reason": "",
            "topic": topic,
            "stream": None,
            "seq": None,
            "kid": None,
            "ts": None,
            "retained": retained,
        }
        self.last_body = None
        res["reason"] = self._check(topic, payload, res)
        res["ok"] = res["reason"].split(":")[0] not in _BAD
        self.counts["ok" if res["ok"] else "bad"] += 1
        return res

    def _check(self, topic: str, payload: bytes, res: dict[str, Any]) -> str:
        try:
            text = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            return "malformed: not ASCII"
        res["kid"] = kid = header_kid(text)
        sub = topic[len(self.base) :] if topic.startswith(self.base) else None
        operator = sub in OPERATOR_TOPICS
        if operator and not self.operator_keys:
            return "unchecked: an operator message (no operator key given)"
        if not operator and kid in self.operator_keys and kid not in self.keys:
            return "wrong_signer: an operator key signed agent data"
        try:
            env = verify(text, self.operator_keys if operator else self.keys)
        except JWSError as e:
            return str(e)
        stream, seq = env.get("stream"), env.get("seq")
        self.last_body = env.get("body")
        res["stream"] = stream if isinstance(stream, str) else None
        res["seq"] = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        res["ts"] = env.get("ts") if isinstance(env.get("ts"), str) else None
        if env.get("v") != 1:
            return "bad_envelope: v must be 1"
        if res["stream"] is None or res["seq"] is None or res["seq"] < 1:
            return "bad_envelope: stream/seq"
        if res["ts"] is None or not _TS.match(res["ts"]):
            return "bad_envelope: ts is not RFC 3339 UTC"
        if "body" not in env:
            return "bad_envelope: no body"
        if env.get("site") != self.site:
            return f"wrong_site: {str(env.get('site'))[:64]!r}"
        want = TOPIC_STREAMS.get(sub) if sub is not None else None
        if want is not None and want != stream:
            return f"wrong_stream: {stream!r} on {sub}"
        if stream == "status":
            body = env["body"]
            if not isinstance(body, dict) or body.get("state") not in ("online", "offline"):
                return "bad_envelope: status body"
        seq = int(res["seq"])
        if stream == "event" and kid in self.announced and seq <= self.announced[kid]:
            return f"unknown_kid: {kid} signed event {seq}, before its announcement"
        key = f"operator:{stream}" if operator else str(stream)
        st = self.streams.setdefault(key, StreamState())
        h = chain_hash(text)
        if stream in CHAINED_STREAMS:
            if "prev" not in env:
                return "bad_envelope: no prev on a chained stream"
            prev = env["prev"]
            if prev is not None and not isinstance(prev, str):
                return "bad_envelope: prev"
            reason = self._chained(st, seq, h, prev)
            if stream == "event" and reason.split(":")[0] not in _BAD:
                self._announcement(env["body"], seq)
            return reason
        return self._plain(st, seq, h)

    def _announcement(self, body: Any, seq: int) -> None:
        """A verified ``key_rotated`` event: its new key signs agent data from now on."""
        if not isinstance(body, dict) or body.get("kind") != "key_rotated":
            return
        kid, pem = body.get("new_kid"), body.get("new_pubkey")
        if not isinstance(kid, str) or not isinstance(pem, str) or kid in self.keys:
            return
        try:
            pub = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return
        if isinstance(pub, Ed25519PublicKey) and thumbprint(pub) == kid:
            self.keys[kid] = pub
            self.announced[kid] = seq

    @staticmethod
    def _chained(st: StreamState, seq: int, h: str, prev: str | None) -> str:
        if seq in st.hashes:
            return "duplicate" if st.hashes[seq] == h else f"seq_reused: seq {seq}"
        if seq == 1 and prev is not None:
            return "bad_prev: seq 1 must have prev null"
        if seq > 1 and prev is None:
            return "bad_prev: prev is null"
        before = st.hashes.get(seq - 1)
        if before is not None and before != prev:
            st.remember(seq, h, prev)
            return f"chain_broken: prev does not match seq {seq - 1}"
        nxt = seq + 1
        if nxt in st.prevs and st.prevs[nxt] != h:
            st.remember(seq, h, prev)
            return f"chain_broken: seq {nxt} does not chain to this message"
        first = st.max_seq == 0
        last = st.max_seq
        st.remember(seq, h, prev)
        if first or seq == last + 1:
            return "ok"
        if seq > last + 1:
            return f"gap: missing seq {last + 1}..{seq - 1}"
        return "gap_filled"

    @staticmethod
    def _plain(st: StreamState, seq: int, h: str) -> str:
        if seq in st.hashes:
            return "duplicate" if st.hashes[seq] == h else f"seq_reused: seq {seq}"
        if st.max_seq and seq <= st.max_seq:
            st.remember(seq, h, None)
            return f"seq_not_increasing: {seq} after {st.max_seq}"
        st.remember(seq, h, None)
        return "ok"


_BAD = frozenset(
    {
        "malformed",
        "bad_alg",
        "unknown_kid",
        "bad_signature",
        "bad_envelope",
        "wrong_site",
        "wrong_stream",
        "gap",
        "chain_broken",
        "bad_prev",
        "seq_reused",
        "seq_not_increasing",
        "wrong_signer",
    }
)


def load_keys(paths: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        k = load_public(Path(p))
        keys[thumbprint(k)] = k
    return keys


async def verify_async(
    url: str,
    site: str,
    keys: Mapping[str, Ed25519PublicKey],
    seconds: float | None,
    out: TextIO,
    topic_prefix: str = "dh/v1",
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
    err: TextIO | None = None,
    checker: Checker | None = None,
) -> int:
    """Subscribe to ``P/S/#`` and print one JSON line per message until ``seconds`` pass
    (forever when None). Exit status: 0 all ok, 1 some message not ok, 2 no connection."""
    import aiomqtt

    from agent.uplink_conn import describe_error, parse_url, tls_context

    err = err or sys.stderr
    addr = parse_url(url)
    checker = checker or Checker(site, keys, topic_prefix)
    deadline = None if seconds is None else time.monotonic() + seconds
    connected_once = False

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    while True:
        remaining = left()
        if remaining is not None and remaining <= 0:
            break
        try:
            ctx = tls_context(ca_file, cert_file, key_file) if addr.tls else None
            client = aiomqtt.Client(
                addr.host,
                addr.port,
                username=username if username is not None else addr.username,
                password=password if password is not None else addr.password,
                tls_context=ctx,
                timeout=10,
            )
            async with client:
                await client.subscribe(f"{topic_prefix}/{site}/#", qos=1)
                connected_once = True
                print(f"verify: subscribed to {topic_prefix}/{site}/#", file=err, flush=True)
                async with asyncio.timeout(left()):
                    async for m in client.messages:
                        raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        res = checker.check(str(m.topic), raw, bool(m.retain))
                        out.write(json.dumps(res, sort_keys=True) + "\n")
                        out.flush()
        except TimeoutError:
            break
        except (aiomqtt.MqttError, OSError, ValueError) as e:
            print(f"verify: {describe_error(e, addr, ca_file)}", file=err, flush=True)
            if not connected_once:
                return 2
            await asyncio.sleep(min(1.0, left() or 1.0))
    return 1 if checker.counts["bad"] else 0


def run_verify(
    url: str,
    site: str,
    pubkeys: Sequence[Path],
    seconds: float | None,
    out: TextIO,
    topic_prefix: str = "dh/v1",
    *,
    operator_pubkeys: Sequence[Path] = (),
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> int:
    try:
        keys = load_keys(pubkeys)
        operator_keys = load_keys(operator_pubkeys)
    except (OSError, ValueError) as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    checker = Checker(site, keys, topic_prefix, operator_keys)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            verify_async(
                url,
                site,
                keys,
                seconds,
                out,
                topic_prefix,
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                username=username,
                password=password,
                checker=checker,
            )
        )
    return 1 if checker.counts["bad"] else 0  # interrupted (Ctrl-C)
