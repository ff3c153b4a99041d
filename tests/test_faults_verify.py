"""Issue 13 item 6: `verify` continuity per stream across key rotations, keys accepted only
after their signed announcement, operator keys never accepted for agent data."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer, chain_hash, envelope
from agent.verify import Checker

SITE = "site-1"
BASE = f"dh/v1/{SITE}"


def pem(s: Signer) -> str:
    key: Ed25519PrivateKey = s.key
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Stream:
    """Builds a chained stream whose messages are signed by whichever key is current."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.prev: str | None = None

    def next(self, signer: Signer, body: Mapping[str, object], *, prev: str | None = "") -> bytes:
        self.seq += 1
        p = self.prev if prev == "" else prev
        c = signer.sign(envelope(SITE, self.name, self.seq, p, 1e9 + self.seq, body))
        self.prev = chain_hash(c)
        return c.encode()


def check(ch: Checker, topic: str, raw: bytes) -> tuple[bool, str]:
    r = ch.check(f"{BASE}/{topic}", raw)
    return r["ok"], r["reason"].split(":")[0]


def rotation(old: Signer, new: Signer, ev: Stream) -> bytes:
    body = {"kind": "key_rotated", "old_kid": old.kid, "new_kid": new.kid, "new_pubkey": pem(new)}
    return ev.next(old, body)


def test_a_gap_across_a_key_rotation_is_a_gap() -> None:
    a, b = Signer(Ed25519PrivateKey.generate()), Signer(Ed25519PrivateKey.generate())
    ch = Checker(SITE, {a.kid: a.public_key})
    iv, ev = Stream("interval"), Stream("event")
    assert check(ch, "interval", iv.next(a, {"i": 1})) == (True, "ok")
    assert check(ch, "interval", iv.next(a, {"i": 2})) == (True, "ok")
    assert check(ch, "event", rotation(a, b, ev)) == (True, "ok")
    iv.next(b, {"i": 3})  # lost
    four = iv.next(b, {"i": 4})
    assert check(ch, "interval", four) == (False, "gap")
    # the same when the head-end knew both keys from the start
    both = Checker(SITE, {a.kid: a.public_key, b.kid: b.public_key})
    iv2 = Stream("interval")
    assert check(both, "interval", iv2.next(a, {"i": 1})) == (True, "ok")
    iv2.next(b, {"i": 2})  # lost
    assert check(both, "interval", iv2.next(b, {"i": 3})) == (False, "gap")


def test_a_broken_chain_across_a_key_rotation_is_broken() -> None:
    a, b = Signer(Ed25519PrivateKey.generate()), Signer(Ed25519PrivateKey.generate())
    ch = Checker(SITE, {a.kid: a.public_key})
    iv, ev = Stream("interval"), Stream("event")
    assert check(ch, "interval", iv.next(a, {"i": 1})) == (True, "ok")
    assert check(ch, "event", rotation(a, b, ev)) == (True, "ok")
    assert check(ch, "interval", iv.next(b, {"i": 2}, prev="A" * 43)) == (False, "chain_broken")


def test_a_key_is_accepted_only_after_its_announcement() -> None:
    a, b = Signer(Ed25519PrivateKey.generate()), Signer(Ed25519PrivateKey.generate())
    ch = Checker(SITE, {a.kid: a.public_key})
    iv, ev = Stream("interval"), Stream("event")
    early = iv.next(b, {"i": 1})
    assert check(ch, "interval", early) == (False, "unknown_kid")
    assert check(ch, "event", ev.next(a, {"kind": "x"})) == (True, "ok")
    # an announcement signed by an unknown key announces nothing
    c = Signer(Ed25519PrivateKey.generate())
    ev2 = Stream("event")
    ev2.seq, ev2.prev = ev.seq, ev.prev
    assert check(ch, "event", rotation(c, b, ev2))[0] is False
    assert check(ch, "event", rotation(a, b, ev)) == (True, "ok")
    assert check(ch, "interval", early) == (True, "ok")  # re-sent after the announcement
    assert check(ch, "interval", iv.next(b, {"i": 2})) == (True, "ok")
    # an event signed by the new key at or before the announcement's seq is refused
    old_ev = Stream("event")
    old_ev.seq = 1
    assert check(ch, "event", old_ev.next(b, {"kind": "y"}))[0] is False


def test_an_operator_key_is_never_accepted_as_agent_data() -> None:
    agent, op = Signer(Ed25519PrivateKey.generate()), Signer(Ed25519PrivateKey.generate())
    ch = Checker(SITE, {agent.kid: agent.public_key}, operator_keys={op.kid: op.public_key})
    forged = Stream("interval").next(op, {"energy_kwh": 0})
    assert check(ch, "interval", forged) == (False, "wrong_signer")
    assert (
        check(ch, "telemetry", op.sign(envelope(SITE, "telemetry", 1, None, 1e9, {})).encode())[0]
        is False
    )
    # and an agent key cannot sign operator messages
    cmd = agent.sign(envelope(SITE, "cmd", 1, None, 1e9, {"id": "x", "cmd": "poll_now"})).encode()
    assert check(ch, "cmd", cmd) == (False, "unknown_kid")
    # an operator's rotate announcement on the event topic adds no key
    ev = Stream("event")
    assert check(ch, "event", rotation(op, Signer(Ed25519PrivateKey.generate()), ev))[0] is False
