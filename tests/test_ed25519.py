"""agent.ed25519: Ed25519 on the loaded libcrypto (ctypes) against cryptography, both
paths (native and the cryptography fallback), key files, and no leaks."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agent import ed25519
from agent.jws import JWSError, Signer, b64u_decode, b64u_encode, envelope, thumbprint, verify
from agent.keys import keygen, load_signing_key, load_verify_key

LINUX = sys.platform.startswith("linux")


def native() -> ed25519.Lib:
    lib = ed25519.native_lib()
    assert lib is not None, "the loaded libcrypto should do Ed25519 here"
    return lib


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not LINUX, reason="/proc/self/maps")
def test_native_library_is_the_loaded_libcrypto() -> None:
    lib = native()
    path = ed25519._mapped_libcrypto()
    assert path is not None and "libcrypto" in path
    assert ed25519._self_test(lib)
    assert isinstance(ed25519.private_from_seed(bytes(32)), ed25519.NativePrivateKey)


def test_signatures_and_verification_agree_with_cryptography() -> None:
    lib, rnd = native(), random.Random(1)
    for n in range(300):
        seed, msg = os.urandom(32), rnd.randbytes(rnd.choice([0, 1, 31, 64, 200, 5000]))
        ours, theirs = (
            ed25519.NativePrivateKey(lib, seed),
            Ed25519PrivateKey.from_private_bytes(seed),
        )
        pub, cpub = ours.public_key(), theirs.public_key()
        assert pub.public_bytes_raw() == cpub.public_bytes_raw()
        sig = ours.sign(msg)
        assert sig == theirs.sign(msg)  # Ed25519 is deterministic
        other = ed25519.NativePrivateKey(lib, os.urandom(32)).public_key()
        bad_sig = bytearray(sig)
        bad_sig[n % 64] ^= 1 << (n % 8)
        cases = [
            (pub, sig, msg),
            (pub, sig, msg + b"!"),  # tampered message
            (pub, bytes(bad_sig), msg),  # tampered signature
            (other, sig, msg),  # wrong key
            (pub, sig[:63], msg),  # short signature
        ]
        for key, s, m in cases:
            crypto_key = Ed25519PublicKey.from_public_bytes(key.public_bytes_raw())
            assert ed25519.verifies(key, s, m) == ed25519.verifies(crypto_key, s, m)
        assert [ed25519.verifies(k, s, m) for k, s, m in cases] == [True] + [False] * 4
    assert lib.dll.ERR_peek_error() == 0  # failures left no stale OpenSSL error


def test_native_verify_raises_like_cryptography() -> None:
    key = ed25519.NativePrivateKey(native(), os.urandom(32))
    key.public_key().verify(key.sign(b"m"), b"m")
    with pytest.raises(ed25519.InvalidSignature):
        key.public_key().verify(key.sign(b"m"), b"n")


@pytest.mark.parametrize("native_first", [True, False])
def test_jws_interoperates_across_both_paths(native_first: bool) -> None:
    seed = os.urandom(32)
    a = ed25519.private_from_seed(seed, native=native_first)
    b = ed25519.private_from_seed(seed, native=not native_first)
    assert isinstance(a, ed25519.NativePrivateKey) == native_first
    assert isinstance(b, Ed25519PrivateKey) == native_first
    env = envelope("s", "interval", 1, None, 1_700_000_000.0, {"e": 1.5, "x": "ä"})
    sa, sb = Signer(a), Signer(b)
    assert sa.kid == sb.kid
    compact = sa.sign(env)
    assert compact == sb.sign(env)
    for pub in (sa.public_key, sb.public_key):
        assert verify(compact, {sa.kid: pub}) == env
        head, body, sig = compact.split(".")
        tampered = b64u_decode(body).replace(b'"e":1.5', b'"e":2.5')
        forged = f"{head}.{b64u_encode(tampered)}.{sig}"
        with pytest.raises(JWSError, match="bad_signature"):
            verify(forged, {sa.kid: pub})
    wrong = ed25519.private_from_seed(os.urandom(32), native=native_first).public_key()
    with pytest.raises(JWSError, match="bad_signature"):
        verify(compact, {sa.kid: wrong})


def test_key_files_load_natively_and_match_cryptography(tmp_path: Path) -> None:
    kid = keygen(tmp_path)
    priv, pub = load_signing_key(tmp_path / "agent.key"), load_verify_key(tmp_path / "agent.pub")
    assert isinstance(priv, ed25519.NativePrivateKey)
    assert isinstance(pub, ed25519.NativePublicKey)
    assert thumbprint(pub) == thumbprint(priv.public_key()) == kid
    crypto = load_pem_private_key((tmp_path / "agent.key").read_bytes(), None)
    assert isinstance(crypto, Ed25519PrivateKey)
    assert priv.sign(b"hello") == crypto.sign(b"hello")
    assert ed25519.public_pem(pub) == (tmp_path / "agent.pub").read_text()


def test_new_private_pem_is_what_cryptography_writes() -> None:
    pem = ed25519.new_private_pem()
    crypto = load_pem_private_key(pem, None)
    assert isinstance(crypto, Ed25519PrivateKey)
    assert crypto.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) == pem
    ours = ed25519.load_private_pem(pem)
    assert isinstance(ours, ed25519.NativePrivateKey)
    assert ours.sign(b"x") == crypto.sign(b"x")
    assert ed25519.new_private_pem() != pem


def test_other_pem_forms_fall_back_to_cryptography() -> None:
    seed = os.urandom(32)
    crypto = Ed25519PrivateKey.from_private_bytes(seed)
    pem = crypto.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    padded = b"a comment before the key\n" + pem  # not the plain form: cryptography reads it
    key = ed25519.load_private_pem(padded)
    assert isinstance(key, Ed25519PrivateKey)
    assert key.sign(b"m") == ed25519.load_private_pem(pem).sign(b"m")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        ed25519.load_private_pem(b"junk")
    with pytest.raises(ValueError, match="not a PEM public key"):
        ed25519.load_public_pem(b"junk")
    wrong = ed25519.SPKI_PREFIX[:-1] + b"\x01"  # a plain-looking SPKI with a wrong prefix
    bad = ed25519._pem("PUBLIC KEY", wrong + bytes(32)).encode()
    with pytest.raises(ValueError):
        ed25519.load_public_pem(bad)


def test_without_native_library_everything_uses_cryptography(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keygen(tmp_path)
    monkeypatch.setattr(ed25519, "native_lib", lambda: None)
    priv, pub = load_signing_key(tmp_path / "agent.key"), load_verify_key(tmp_path / "agent.pub")
    assert isinstance(priv, Ed25519PrivateKey) and isinstance(pub, Ed25519PublicKey)
    s = Signer(priv)
    assert verify(s.sign({"a": 1}), {s.kid: pub}) == {"a": 1}
    assert isinstance(ed25519.load_private_pem(ed25519.new_private_pem()), Ed25519PrivateKey)


def test_a_library_without_ed25519_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A libcrypto without the raw-key functions (OpenSSL < 1.1.1) or one that gets RFC
    8032's vector wrong: no native path."""
    real = ed25519._mapped_libcrypto
    ed25519.native_lib.cache_clear()
    try:
        monkeypatch.setattr(ed25519, "_mapped_libcrypto", lambda: "libc.so.6")  # no EVP_*
        assert ed25519.native_lib() is None
        ed25519.native_lib.cache_clear()
        monkeypatch.setattr(ed25519, "_mapped_libcrypto", lambda: None)
        assert ed25519.native_lib() is None
        ed25519.native_lib.cache_clear()
        monkeypatch.setattr(ed25519, "_mapped_libcrypto", real)
        monkeypatch.setattr(ed25519, "_T1_SIG", bytes(64))
        assert ed25519.native_lib() is None
    finally:
        ed25519.native_lib.cache_clear()
        monkeypatch.undo()
    assert ed25519.native_lib() is not None


@pytest.mark.skipif(not LINUX, reason="/proc/self/status")
def test_no_openssl_object_leaks() -> None:
    """100,000 signatures (and verifications, and keys made and dropped): RSS stays flat;
    a leaked context or key would cost tens of MB."""
    lib = native()
    key = ed25519.NativePrivateKey(lib, os.urandom(32))
    pub, msg = key.public_key(), os.urandom(300)
    for _ in range(2000):  # warm up the allocator
        pub.verifies(key.sign(msg), msg)
    before = rss_kb()
    for _ in range(100_000):
        key.sign(msg)
    for _ in range(20_000):
        pub.verifies(b"\0" * 64, msg)
    for _ in range(5_000):
        ed25519.NativePrivateKey(lib, os.urandom(32)).public_key()
    assert rss_kb() - before < 1024
