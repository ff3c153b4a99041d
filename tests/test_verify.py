"""The head-end checker (pure) and ``dh-agent verify`` against a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.jws import Signer, chain_hash, envelope
from agent.keys import keygen, load_private
from agent.verify import Checker
from tests.support.mosquitto import Mosquitto, mosquitto  # noqa: F401
from tests.test_uplink import MemStore, add, await_until, make_uplink

SITE = "site-1"
BASE = f"dh/v1/{SITE}"
_SIGNER = Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def signer() -> Signer:
    return _SIGNER


def chain(signer: Signer, stream: str, n: int, site: str = SITE) -> list[bytes]:
    out: list[bytes] = []
    prev: str | None = None
    for seq in range(1, n + 1):
        c = signer.sign(envelope(site, stream, seq, prev, 1e9 + seq, {"seq": seq}))
        out.append(c.encode())
        prev = chain_hash(c)
    return out


def checker(signer: Signer) -> Checker:
    return Checker(SITE, {signer.kid: signer.public_key})


def results(ch: Checker, topic: str, msgs: list[bytes]) -> list[tuple[bool, str]]:
    out = []
    for m in msgs:
        r = ch.check(f"{BASE}/{topic}", m)
        out.append((r["ok"], r["reason"].split(":")[0]))
    return out


def test_a_complete_chain_verifies(signer: Signer) -> None:
    ch = checker(signer)
    msgs = chain(signer, "interval", 5)
    assert results(ch, "interval", msgs) == [(True, "ok")] * 5
    r = ch.check(f"{BASE}/interval", msgs[0], retained=False)
    assert r["ok"] and r["reason"] == "duplicate" and r["seq"] == 1 and r["kid"] == signer.kid


def test_missing_reordered_altered_replayed_are_visible(signer: Signer) -> None:
    m = chain(signer, "event", 6)
    ch = checker(signer)
    # missing 3, then the resend fills it
    assert results(ch, "event", [m[0], m[1], m[3], m[2], m[4]]) == [
        (True, "ok"),
        (True, "ok"),
        (False, "gap"),
        (True, "gap_filled"),
        (True, "ok"),
    ]
    # same seq, different bytes (a forged or re-signed message)
    forged = signer.sign(envelope(SITE, "event", 5, chain_hash(m[3].decode()), 1, {"x": 1}))
    assert results(ch, "event", [forged.encode()]) == [(False, "seq_reused")]
    # a validly signed message whose prev does not match its predecessor
    ch2 = checker(signer)
    bad = signer.sign(envelope(SITE, "event", 3, "A" * 43, 1, {})).encode()
    want = [(True, "ok"), (True, "ok"), (False, "chain_broken")]
    assert results(ch2, "event", [m[0], m[1], bad]) == want
    # a message that arrives before its predecessor, which then does not chain to it
    ch3 = checker(signer)
    assert results(ch3, "event", [m[0], m[2]]) == [(True, "ok"), (False, "gap")]
    other2 = signer.sign(envelope(SITE, "event", 2, chain_hash(m[0].decode()), 7, {})).encode()
    assert results(ch3, "event", [other2]) == [(False, "chain_broken")]
    # seq 1 must have prev null; later seqs must have one
    ch4 = checker(signer)
    s1 = signer.sign(envelope(SITE, "interval", 1, "x", 1, {})).encode()
    assert results(ch4, "interval", [s1]) == [(False, "bad_prev")]


def test_first_message_mid_stream_is_accepted(signer: Signer) -> None:
    m = chain(signer, "interval", 10)
    ch = checker(signer)
    assert results(ch, "interval", m[6:]) == [(True, "ok")] * 4


def test_plain_streams_must_increase(signer: Signer) -> None:
    ch = checker(signer)
    t = [signer.sign(envelope(SITE, "telemetry", s, None, 1, {})).encode() for s in (1, 2, 5, 3)]
    assert results(ch, "telemetry", [*t, t[2]]) == [
        (True, "ok"),
        (True, "ok"),
        (True, "ok"),  # telemetry may have gaps
        (False, "seq_not_increasing"),
        (True, "duplicate"),
    ]


def test_bad_messages(signer: Signer) -> None:
    ch = checker(signer)
    other = Signer(Ed25519PrivateKey.generate())
    good = signer.sign(envelope(SITE, "event", 1, None, 1, {}))
    h, p, s = good.split(".")
    cases: list[tuple[str, bytes, str]] = [
        ("event", b"", "malformed"),
        ("event", b"\xff\xfe", "malformed"),
        ("event", b"not a jws", "malformed"),
        ("event", f"{h}.{p}.{s[:10]}{'B' if s[10] == 'A' else 'A'}{s[11:]}".encode(), "bad_sig"),
        ("event", other.sign(envelope(SITE, "event", 1, None, 1, {})).encode(), "unknown_kid"),
        ("event", signer.sign(envelope("other", "event", 1, None, 1, {})).encode(), "wrong_site"),
        ("interval", good.encode(), "wrong_stream"),
        ("event", signer.sign({"v": 2, "stream": "event", "seq": 1}).encode(), "bad_envelope"),
        ("status", signer.sign(envelope(SITE, "status", 1, None, 1, {"x": 1})).encode(), "bad_"),
    ]
    for topic, raw, want in cases:
        r = ch.check(f"{BASE}/{topic}", raw)
        assert not r["ok"] and r["reason"].startswith(want), (want, r)
        json.dumps(r)  # always printable


def test_operator_and_agent_config_streams_are_separate(signer: Signer) -> None:
    op = Signer(Ed25519PrivateKey.generate())
    ch = Checker(SITE, {signer.kid: signer.public_key}, operator_keys={op.kid: op.public_key})
    cur = signer.sign(envelope(SITE, "config", 1, None, 1, {"version": 0})).encode()
    cset = op.sign(envelope(SITE, "config", 1_700_000_000, None, 1, {"version": 1})).encode()
    assert results(ch, "config/current", [cur]) == [(True, "ok")]
    assert results(ch, "config/set", [cset]) == [(True, "ok")]
    # without operator keys, operator messages are not judged
    assert results(checker(signer), "config/set", [cset]) == [(True, "unchecked")]


# --- the command, end to end -------------------------------------------------------------


def test_verify_command_against_a_live_uplink(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    keygen(tmp_path)
    signer = Signer(load_private(tmp_path / "agent.key"))
    store = MemStore()
    for i in range(40):
        add(store, signer, "interval" if i % 4 else "event", {"i": i})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "verify",
            "--mqtt",
            mosquitto.url,
            "--site",
            SITE,
            "--pubkey",
            str(tmp_path / "agent.pub"),
            "--seconds",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stderr is not None
    assert "subscribed" in proc.stderr.readline()
    ex = ThreadPoolExecutor(1)

    async def main() -> None:
        up = make_uplink(mosquitto.url, store, signer, ex)
        task = asyncio.create_task(up.run())
        await await_until(lambda: store.backlog() == 0, 10, "drain")
        await up.publish_live("telemetry", "telemetry", {"x": 1})
        # garbage and a forgery on the site's topics must be reported, not crash the tool
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="evil")
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        c.publish(f"{BASE}/event", b"\x00garbage", qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        out, _ = proc.communicate(timeout=20)
    finally:
        ex.shutdown()
        if proc.poll() is None:
            proc.kill()
    lines: list[dict[str, Any]] = [json.loads(x) for x in out.splitlines()]
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for r in lines:
        by_topic.setdefault(r["topic"].rsplit("/", 1)[-1], []).append(r)
    assert [r["seq"] for r in by_topic["interval"]] == list(range(1, 31))
    assert all(r["ok"] for r in by_topic["interval"])
    assert [r["ok"] for r in by_topic["event"]] == [True] * 10 + [False]
    assert by_topic["event"][-1]["reason"].startswith("malformed")
    assert [r["ok"] for r in by_topic["status"]] == [True, True]  # online, then offline
    assert by_topic["telemetry"][0]["ok"]
    assert proc.returncode == 1  # one message was not ok


def test_verify_exit_codes(tmp_path: Path) -> None:
    from agent.verify import run_verify
    from tests.support.mosquitto import free_port

    keygen(tmp_path)
    t0 = time.monotonic()
    import io

    rc = run_verify(
        f"mqtt://127.0.0.1:{free_port()}", SITE, [tmp_path / "agent.pub"], 1, io.StringIO()
    )
    assert rc == 2 and time.monotonic() - t0 < 5
    assert run_verify("mqtt://127.0.0.1:1", SITE, [tmp_path / "missing.pub"], 1, io.StringIO()) == 2
