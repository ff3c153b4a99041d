"""Remote config/set and cmd decisions (contract section 7): pure, no broker."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, parse_text
from agent.jws import Signer, envelope
from agent.remote import apply_overlay, decide_cmd, decide_config, persist_overlay
from tests.support.configs import GOOD

SITE = "sub-000123"
NOW = 1_790_000_000.0
OP = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
SIGNER = Signer(OP)
KEYS = {SIGNER.kid: OP.public_key()}


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def msg(
    body: object,
    *,
    stream: str = "config",
    site: str = SITE,
    signer: Signer = SIGNER,
    ts: float = NOW,
) -> bytes:
    return signer.sign(envelope(site, stream, 1, None, ts, body)).encode()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return parse_text(GOOD, tmp_path)


def cfg_decide(raw: bytes, cfg: Config, version: int = 3):  # type: ignore[no-untyped-def]
    return decide_config(raw, keys=KEYS, site=SITE, active_version=version, active=cfg)


def test_valid_config_applies(cfg: Config) -> None:
    d = cfg_decide(msg({"version": 4, "config": {"contract": {"flow_limit_m3h": 2.0}}}), cfg)
    assert d.ack == {"version": 4, "result": "applied", "reason": ""}
    assert d.config is not None and d.config.contract.flow_limit_m3h == 2.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed"),
        (b"\xff\xfe garbage", "malformed"),
        (b"a.b.c", "malformed"),
        (b"x" * 70000, "malformed"),
    ],
)
def test_garbage_is_malformed(cfg: Config, raw: bytes, reason: str) -> None:
    d = cfg_decide(raw, cfg)
    assert d.ack["result"] == "rejected" and d.ack["reason"].startswith(reason)
    assert d.ack["version"] is None and d.config is None


def test_unsigned_and_bad_signatures(cfg: Config) -> None:
    env = envelope(SITE, "config", 1, None, NOW, {"version": 4, "config": {}})
    payload = b64(json.dumps(env).encode())
    none_alg = f"{b64(json.dumps({'alg': 'none'}).encode())}.{payload}.".encode()
    d = cfg_decide(none_alg, cfg)
    assert d.ack["reason"].startswith("bad_signature") and d.ack["version"] == 4
    good = msg({"version": 4, "config": {}}).decode()
    h, p, s = good.split(".")
    flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
    assert cfg_decide(f"{h}.{p}.{flipped}".encode(), cfg).ack["reason"] == "bad_signature"
    other_body = b64(json.dumps({**env, "body": {"version": 99, "config": {}}}).encode())
    assert cfg_decide(f"{h}.{other_body}.{s}".encode(), cfg).ack["reason"] == "bad_signature"


def test_unknown_key_wrong_site_stale(cfg: Config) -> None:
    body = {"version": 4, "config": {}}
    assert cfg_decide(msg(body, signer=Signer(OTHER)), cfg).ack["reason"].startswith("unknown_key")
    assert cfg_decide(msg(body, site="sub-999"), cfg).ack["reason"] == "wrong_site"
    assert (
        cfg_decide(msg({"version": 3, "config": {}}), cfg).ack["reason"].startswith("stale_version")
    )
    assert cfg_decide(msg(body, stream="cmd"), cfg).ack["reason"].startswith("malformed")


@pytest.mark.parametrize(
    ("partial", "reason"),
    [
        ({"contract": {"flow_limit_m3h": -1}}, "invalid: contract.flow_limit_m3h:"),
        ({"devices": [{"name": "hm1", "poll_s": "fast"}]}, "invalid: devices[0].poll_s:"),
        ({"contract": {"flow_limit_m3h": 1e308}}, "invalid: contract.flow_limit_m3h:"),
        ({"mqtt": {"url": "mqtt://evil"}}, "unknown_key: mqtt.url"),
        ({"storage": {"path": "/tmp/x"}}, "unknown_key: storage"),
        ({"contract": {"flow_limit_m3h": True}}, "invalid: contract.flow_limit_m3h:"),
        ("not a table", "invalid: config"),
    ],
)
def test_invalid_values_name_their_path(cfg: Config, partial: object, reason: str) -> None:
    d = cfg_decide(msg({"version": 4, "config": partial}), cfg)
    assert d.ack["result"] == "rejected"
    assert d.ack["reason"].startswith(reason), d.ack


def test_cmd_rules() -> None:
    def dec(raw: bytes, seen: set[str] | None = None):  # type: ignore[no-untyped-def]
        return decide_cmd(raw, keys=KEYS, site=SITE, now=NOW, seen_ids=seen or set())

    ok = msg({"id": "a1", "cmd": "poll_now"}, stream="cmd")
    assert dec(ok).ack == {"id": "a1", "result": "done", "reason": ""}
    assert dec(ok, {"a1"}).ack["reason"].startswith("replayed")
    old = msg({"id": "a2", "cmd": "poll_now"}, stream="cmd", ts=NOW - 601)
    assert dec(old).ack["reason"].startswith("stale_ts")
    future = msg({"id": "a3", "cmd": "poll_now"}, stream="cmd", ts=NOW + 601)
    assert dec(future).ack["reason"].startswith("stale_ts")
    assert (
        dec(msg({"id": "a4", "cmd": "format_disk"}, stream="cmd"))
        .ack["reason"]
        .startswith("invalid: cmd")
    )
    rs = {"id": "a5", "cmd": "resend", "stream": "interval", "from_seq": 5, "to_seq": 2}
    assert dec(msg(rs, stream="cmd")).ack["reason"].startswith("invalid: to_seq")
    rs.update(from_seq=1, to_seq=10)
    d = dec(msg(rs, stream="cmd"))
    assert d.accepted and d.command is not None and d.command["to_seq"] == 10
    for stream in (["interval"], {"s": 1}, None, 7, "status"):  # JSON of any shape
        bad = {**rs, "id": f"a6-{stream!r}", "stream": stream}
        assert dec(msg(bad, stream="cmd")).ack["reason"] == (
            "invalid: stream: must be interval or event"
        )


def test_overlay_persists_and_replays_stale(cfg: Config, tmp_path: Path) -> None:
    d = cfg_decide(msg({"version": 7, "config": {"contract": {"flow_limit_m3h": 1.5}}}), cfg)
    assert d.config is not None
    persist_overlay(d.config, 7)
    again, version, problem = apply_overlay(parse_text(GOOD, tmp_path))
    assert (version, problem) == (7, "")
    assert again.contract.flow_limit_m3h == 1.5
    # a replay of the same message after a restart is stale
    assert (
        cfg_decide(msg({"version": 7, "config": {}}), again, version)
        .ack["reason"]
        .startswith("stale_version")
    )


hostile = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile, raw=st.binary(max_size=300), cut=st.integers(0, 400))
def test_fuzz_never_raises_and_never_applies_junk(
    tmp_path_factory: pytest.TempPathFactory, body: object, raw: bytes, cut: int
) -> None:
    cfg = parse_text(GOOD, tmp_path_factory.getbasetemp())
    for payload in (
        raw,
        msg(body)[:cut],
        msg({"version": 4, "config": body}),
        msg(body, stream="cmd"),
    ):
        d = cfg_decide(payload, cfg)
        assert d.ack["result"] in ("applied", "rejected")
        if d.accepted:
            assert d.config is not None
            assert math.isfinite(d.config.contract.flow_limit_m3h or 0.0)
        c = decide_cmd(payload, keys=KEYS, site=SITE, now=NOW, seen_ids=set())
        assert c.ack["result"] in ("done", "rejected")
        json.dumps(d.ack)
        json.dumps(c.ack)
