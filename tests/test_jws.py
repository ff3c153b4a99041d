"""JWS / envelope / keygen: checked against joserfc (test-only) and RFC vectors."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws as jose_jws
from joserfc.jwk import OKPKey

from agent.jws import (
    JWSError,
    Signer,
    b64u_decode,
    b64u_encode,
    chain_hash,
    envelope,
    header_kid,
    thumbprint,
    verify,
)
from agent.keys import keygen, load_private, load_public
from agent.timefmt import rfc3339_ms as rfc3339


def jose_verify(compact: str, pub: Ed25519PublicKey) -> dict[str, Any]:
    """Verify with joserfc, an independent JOSE implementation."""
    pem = pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key = OKPKey.import_key(pem)
    obj = jose_jws.deserialize_compact(compact, key, algorithms=["Ed25519"])
    assert obj.protected == {"alg": "Ed25519", "kid": thumbprint(pub)}
    payload = json.loads(obj.payload)
    assert isinstance(payload, dict)
    return payload


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def test_rfc8037_thumbprint_vector() -> None:
    # RFC 8037 appendix A.1 / A.3
    x = b64u_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    pub = Ed25519PublicKey.from_public_bytes(x)
    assert thumbprint(pub) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_matches_joserfc(signer: Signer) -> None:
    pem = signer.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert OKPKey.import_key(pem).thumbprint() == signer.kid


def test_sign_verifies_with_joserfc_and_own(signer: Signer) -> None:
    env = envelope("sub-1", "interval", 1, None, 1_700_000_000.5, {"energy_kwh": 12.5, "ä": "ö"})
    compact = signer.sign(env)
    assert jose_verify(compact, signer.public_key) == env
    assert verify(compact, {signer.kid: signer.public_key}) == env
    assert header_kid(compact) == signer.kid
    header = json.loads(b64u_decode(compact.split(".")[0]))
    assert header == {"alg": "Ed25519", "kid": signer.kid}


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
def test_joserfc_signed_message_verifies_here(signer: Signer) -> None:
    """The other direction: an operator tool using a standard library."""
    pem = signer.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    key = OKPKey.import_key(pem)
    payload = json.dumps({"v": 1, "stream": "cmd", "body": {"x": 1}}).encode()
    for alg in ("Ed25519", "EdDSA"):  # EdDSA: the older RFC 8037 name, still accepted
        compact = jose_jws.serialize_compact(
            {"alg": alg, "kid": signer.kid}, payload, key, algorithms=[alg]
        )
        assert verify(compact, {signer.kid: signer.public_key})["body"] == {"x": 1}


def test_envelope_fields() -> None:
    e = envelope("s", "interval", 3, "abc", 0.0, {"a": 1})
    assert e == {
        "v": 1,
        "site": "s",
        "stream": "interval",
        "seq": 3,
        "prev": "abc",
        "ts": "1970-01-01T00:00:00.000Z",
        "body": {"a": 1},
    }
    assert envelope("s", "event", 1, None, 0.0, {})["prev"] is None
    assert "prev" not in envelope("s", "telemetry", 9, None, 0.0, {})
    assert rfc3339(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"


def test_chain_hash() -> None:
    c = "aGVhZA.Ym9keQ.c2ln"
    want = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
    assert chain_hash(c) == want
    assert "=" not in chain_hash(c) and len(chain_hash(c)) == 43


def _flip(s: str, i: int) -> str:
    return s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1 :]


def test_tampering_is_refused(signer: Signer) -> None:
    keys = {signer.kid: signer.public_key}
    compact = signer.sign(envelope("s", "event", 1, None, 0.0, {"kind": "x"}))
    h, p, s = compact.split(".")
    other = Signer(Ed25519PrivateKey.generate())
    cases = {
        "payload": f"{h}.{_flip(p, 5)}.{s}",
        "signature": f"{h}.{p}.{_flip(s, 3)}",
        "other key's signature": f"{h}.{p}.{other.sign({}).split('.')[2]}",
    }
    for name, bad in cases.items():
        with pytest.raises(JWSError, match=r"bad_signature|malformed"):
            verify(bad, keys)
        assert name
    with pytest.raises(JWSError, match="unknown_kid"):
        verify(compact, {other.kid: other.public_key})
    none_hdr = b64u_encode(b'{"alg":"none","kid":"%s"}' % signer.kid.encode())
    with pytest.raises(JWSError, match="bad_alg"):
        verify(f"{none_hdr}.{p}.", keys)
    crit = b64u_encode(b'{"alg":"Ed25519","kid":"%s","crit":["x"]}' % signer.kid.encode())
    with pytest.raises(JWSError, match="crit"):
        verify(f"{crit}.{p}.{s}", keys)
    assert b64u_decode("AQ") == b"\x01"
    with pytest.raises(ValueError):
        b64u_decode("AR")  # same byte, non-zero padding bits
    for garbage in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.??.**",
        f"{h}.{p}.{s}=",
        "e30.W10.",
        "W10.e30.",
    ]:
        with pytest.raises(JWSError, match="malformed"):
            verify(garbage, keys)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(body=json_values, seq=st.integers(1, 2**40), ts=st.floats(0, 4e9))
def test_roundtrip_any_body(body: Any, seq: int, ts: float) -> None:
    signer = _SIGNER
    env = envelope("site-x", "event", seq, None if seq == 1 else "p", ts, body)
    compact = signer.sign(env)
    assert compact.isascii()
    assert verify(compact, {signer.kid: signer.public_key}) == env
    assert jose_verify(compact, signer.public_key) == env


_SIGNER = Signer(Ed25519PrivateKey.generate())


def test_non_finite_numbers_are_signed_as_null(signer: Signer) -> None:
    body = {"x": float("nan"), "y": [1.5, float("inf"), {"z": -float("inf")}], "n": 2}
    compact = signer.sign(envelope("s", "telemetry", 1, None, 0.0, body))
    env = jose_verify(compact, signer.public_key)
    assert env["body"] == {"x": None, "y": [1.5, None, {"z": None}], "n": 2}


# --- keys ---------------------------------------------------------------------------------


def test_keygen_modes_and_roundtrip(tmp_path: Path) -> None:
    kid = keygen(tmp_path / "k")
    key_path, pub_path = tmp_path / "k" / "agent.key", tmp_path / "k" / "agent.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    priv, pub = load_private(key_path), load_public(pub_path)
    assert thumbprint(pub) == kid == Signer(priv).kid
    compact = Signer(priv).sign({"a": 1})
    assert jose_verify(compact, pub) == {"a": 1}
    assert list(tmp_path.joinpath("k").iterdir()) and not [
        p for p in tmp_path.joinpath("k").iterdir() if p.name.startswith(".")
    ]


def test_keygen_refuses_overwrite_without_force(tmp_path: Path) -> None:
    kid = keygen(tmp_path, "op")
    before = (tmp_path / "op.key").read_bytes()
    with pytest.raises(FileExistsError, match=r"op\.key"):
        keygen(tmp_path, "op")
    assert (tmp_path / "op.key").read_bytes() == before
    (tmp_path / "op.key").unlink()
    with pytest.raises(FileExistsError, match=r"op\.pub"):  # a lone .pub is protected too
        keygen(tmp_path, "op")
    kid2 = keygen(tmp_path, "op", force=True)
    assert kid2 != kid
    assert stat.S_IMODE((tmp_path / "op.key").stat().st_mode) == 0o600
    assert thumbprint(load_public(tmp_path / "op.pub")) == kid2


def test_keygen_mode_ignores_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        keygen(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o600


def test_load_rejects_wrong_key_types(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(
        k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    (tmp_path / "ec.pub").write_bytes(
        k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(ValueError, match="Ed25519"):
        load_private(tmp_path / "ec.key")
    with pytest.raises(ValueError, match="Ed25519"):
        load_public(tmp_path / "ec.pub")
    with pytest.raises(ValueError):
        load_private(tmp_path / "junk")


def test_keygen_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "agent.cli", "keygen", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == thumbprint(load_public(tmp_path / "agent.pub"))
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r2.returncode != 0 and "--force" in r2.stderr
    r3 = subprocess.run([*cmd, "--force"], capture_output=True, text=True, timeout=60)
    assert r3.returncode == 0 and r3.stdout.strip() != r.stdout.strip()
