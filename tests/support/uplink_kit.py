"""Shared pieces of the uplink tests: an in-memory outbox with the Store's API, a paho
subscriber, and stream checks (joserfc and ``agent.verify.Checker``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jws as jose_jws
from joserfc.jwk import OKPKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.jws import Signer, b64u_decode, chain_hash, envelope, thumbprint
from agent.uplink import MqttSettings, Uplink
from agent.verify import Checker

SITE = "site-1"
PREFIX = "dh/v1"
BASE = f"{PREFIX}/{SITE}"


# --- an in-memory outbox with the Store's API (thread-safe, called via the executor) ---------


@dataclass(frozen=True, slots=True)
class Msg:
    id: int
    stream: str
    seq: int
    topic: str
    qos: int
    retain: bool
    payload: str


class MemStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[Msg] = []
        self.seqs: dict[str, int] = {}
        self.sent: set[int] = set()
        self.mark_calls = 0
        self.refused: dict[int, tuple[int, str]] = {}

    def next_seq(self, stream: str) -> int:
        with self.lock:
            self.seqs[stream] = self.seqs.get(stream, 0) + 1
            return self.seqs[stream]

    def append_message(
        self,
        stream: str,
        topic: str,
        qos: int,
        retain: bool,
        sign: Callable[[int, str | None], str],
    ) -> Msg:
        with self.lock:
            seq = self.seqs.get(stream, 0) + 1
            last = [r for r in self.rows[-50:] if r.stream == stream] or [
                r for r in self.rows if r.stream == stream
            ]
            prev = chain_hash(last[-1].payload) if last else None
            m = Msg(len(self.rows) + 1, stream, seq, topic, qos, retain, sign(seq, prev))
            self.seqs[stream] = seq
            self.rows.append(m)
            return m

    def unsent(self, limit: int, after_id: int = 0) -> list[Msg]:
        with self.lock:
            out = []
            for r in self.rows[after_id:]:
                if r.id not in self.sent:
                    out.append(r)
                    if len(out) >= limit:
                        break
            return out

    def mark_sent(self, ids: Sequence[int]) -> None:
        with self.lock:
            self.sent.update(ids)
            self.mark_calls += 1

    def mark_refused(self, items: Sequence[tuple[int, int, str]]) -> None:
        with self.lock:
            for mid, code, reason in items:
                self.sent.add(mid)
                self.refused[mid] = (code, reason)

    def mark_unsent(self, stream: str, from_seq: int, to_seq: int) -> int:
        with self.lock:
            ids = {r.id for r in self.rows if r.stream == stream and from_seq <= r.seq <= to_seq}
            self.sent.difference_update(ids)
            return len(ids)

    def backlog(self) -> int:
        with self.lock:
            return len(self.rows) - len(self.sent)


def add(store: MemStore, signer: Signer, stream: str, body: dict[str, Any]) -> Msg:
    def sign(seq: int, prev: str | None) -> str:
        return signer.sign(envelope(SITE, stream, seq, prev, time.time(), body))

    return store.append_message(stream, f"{BASE}/{stream}", 1, False, sign)


# --- a subscriber: paho in its own thread, persistent session, auto-reconnect ---------------


class Collector:
    """A head-end's paho subscriber (persistent session, QoS 1) to ``topic`` (default
    everything of the site at ``base``); ready once subscribed."""

    def __init__(
        self,
        port: int,
        topic: str | None = None,
        client_id: str = "collector",
        base: str = BASE,
    ) -> None:
        self.lock = threading.Lock()
        self.msgs: list[tuple[str, bytes, bool, float]] = []
        self.base = base
        self.topic = topic or f"{base}/#"
        self.ready = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(1, 1)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert self.ready.wait(10), "collector did not connect"

    def _on_connect(self, c: paho.Client, *_: Any) -> None:
        c.subscribe(self.topic, qos=1)

    def _on_subscribe(self, c: paho.Client, *_: Any) -> None:
        # ready once the broker has the subscription (SUBACK), not at CONNACK: a message
        # published in between would never reach this collector
        self.ready.set()

    def _on_message(self, c: paho.Client, u: Any, m: paho.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain), time.monotonic()))

    def on(self, sub: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _, _ in self.msgs if t == f"{self.base}/{sub}"]

    def envelopes(self, sub: str) -> list[dict[str, Any]]:
        """The envelopes (seq, prev, body, ...) of ``sub``'s messages, not verified."""
        return [json.loads(b64u_decode(p.split(b".")[1].decode())) for p in self.on(sub)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def jose_payload(compact: bytes, pub: Ed25519PublicKey) -> dict[str, Any]:
    pem = pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    obj = jose_jws.deserialize_compact(
        compact.decode(), OKPKey.import_key(pem), algorithms=["Ed25519"]
    )
    assert obj.protected == {"alg": "Ed25519", "kid": thumbprint(pub)}
    out = json.loads(obj.payload)
    assert isinstance(out, dict)
    return out


def check_stream(payloads: list[bytes], signer: Signer, n: int) -> None:
    """All of 1..n arrived, first occurrences in seq order, each seq one message only (a
    repeat is the same bytes), chain intact, every message joserfc-valid."""
    first: list[int] = []
    by_seq: dict[int, bytes] = {}
    for p in payloads:
        env = jose_payload(p, signer.public_key)
        seq = env["seq"]
        if seq not in by_seq:
            by_seq[seq] = p
            first.append(seq)
        assert by_seq[seq] == p, f"two different messages with seq {seq}"
    assert first == list(range(1, n + 1))
    checker = Checker(SITE, {signer.kid: signer.public_key}, PREFIX)
    stream = jose_payload(payloads[0], signer.public_key)["stream"]
    for p in payloads:
        r = checker.check(f"{BASE}/{stream}", p)
        assert r["ok"], r


def make_uplink(
    url: str, store: MemStore, signer: Signer, ex: ThreadPoolExecutor, **kw: Any
) -> Uplink:
    settings = kw.pop("settings", None) or MqttSettings(url=url, topic_prefix=PREFIX, site=SITE)
    kw.setdefault("backoff_base", 0.1)
    kw.setdefault("backoff_cap", 0.5)
    return Uplink(settings, signer, store, ex, boot=kw.pop("boot", 7), **kw)
