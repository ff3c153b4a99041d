"""Ed25519 for the running agent, through the OpenSSL the interpreter has already loaded.

Why: the ``cryptography`` package's Rust extension carries its own copy of OpenSSL, and
importing it costs about 8 MB of RSS and a noticeable share of the agent's start-up on a
Raspberry-Pi-class gateway. The interpreter has already loaded the system's libcrypto for
its ``ssl`` module (asyncio imports it), and libcrypto 1.1.1 and later do Ed25519 (RFC
8032; deterministic, so both ways give the very same signature). The agent signs and
verifies through that library with ``ctypes``: ``EVP_PKEY_new_raw_private_key`` /
``EVP_PKEY_new_raw_public_key``, then ``EVP_DigestSign`` / ``EVP_DigestVerify`` on a fresh
``EVP_MD_CTX``; every OpenSSL object is freed (the contexts at once, a key's ``EVP_PKEY``
with the key object).

The library is the one already mapped into the process (found in ``/proc/self/maps``,
opened with ``RTLD_NOLOAD``: never a second copy, and no ``find_library``, which runs
``ldconfig`` in a child process). On first use it must reproduce RFC 8032's test 1
(public key, signature, and a refused tampered signature). When the library is missing,
lacks Ed25519 or fails that check, every function here falls back to ``cryptography``,
imported only then. ``cryptography`` stays the tool for key generation (``dh-agent
keygen``) and the command-line tools.

Key files (RFC 8410): a PKCS#8 Ed25519 private key is a fixed 16-byte DER prefix and the
32-byte seed; a SubjectPublicKeyInfo public key a fixed 12-byte prefix and the 32-byte
key. A file in any other form (e.g. PKCS#8 v2 with the public key attached) is read by
``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
EVP_PKEY_ED25519 = 1087  # NID_ED25519, the same in OpenSSL 1.1.1 and 3.x

# RFC 8032 section 7.1, TEST 1 (empty message)
_T1_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
_T1_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
_T1_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


class VerifyKey(Protocol):
    """An Ed25519 public key: ours (``NativePublicKey``) or cryptography's."""

    def public_bytes_raw(self) -> bytes: ...

    def verify(self, signature: bytes, data: bytes, /) -> None: ...


class SignKey(Protocol):
    """An Ed25519 private key: ours (``NativePrivateKey``) or cryptography's."""

    def sign(self, data: bytes, /) -> bytes: ...

    def public_key(self) -> VerifyKey: ...


class InvalidSignature(Exception):
    """``NativePublicKey.verify``: the signature does not verify."""


_P, _SZ, _BUF = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "EVP_PKEY_new_raw_private_key": (_P, [ctypes.c_int, _P, _BUF, _SZ]),
    "EVP_PKEY_new_raw_public_key": (_P, [ctypes.c_int, _P, _BUF, _SZ]),
    "EVP_PKEY_get_raw_public_key": (ctypes.c_int, [_P, _BUF, ctypes.POINTER(_SZ)]),
    "EVP_PKEY_free": (None, [_P]),
    "EVP_MD_CTX_new": (_P, []),
    "EVP_MD_CTX_free": (None, [_P]),
    "EVP_DigestSignInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
    "EVP_DigestSign": (ctypes.c_int, [_P, _BUF, ctypes.POINTER(_SZ), _BUF, _SZ]),
    "EVP_DigestVerifyInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
    "EVP_DigestVerify": (ctypes.c_int, [_P, _BUF, _SZ, _BUF, _SZ]),
    "ERR_clear_error": (None, []),
}


class Lib:
    """The libcrypto functions, typed. Every failure clears OpenSSL's error queue, so no
    stale error is left for the ``ssl`` module to report later."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(dll, name)  # AttributeError: too old (no raw Ed25519 keys)
            fn.restype, fn.argtypes = res, args
            setattr(self, name, fn)
        self.dll = dll

    def new_key(self, raw: bytes, private: bool) -> int:
        new = self.EVP_PKEY_new_raw_private_key if private else self.EVP_PKEY_new_raw_public_key
        p = new(EVP_PKEY_ED25519, None, raw, len(raw)) if len(raw) == 32 else None
        if not p:
            self.ERR_clear_error()
            raise ValueError("not an Ed25519 key")
        return int(p)

    def raw_public(self, pkey: int) -> bytes:
        buf, n = ctypes.create_string_buffer(32), _SZ(32)
        if self.EVP_PKEY_get_raw_public_key(pkey, buf, ctypes.byref(n)) != 1 or n.value != 32:
            self.ERR_clear_error()
            raise ValueError("no raw Ed25519 public key")
        return buf.raw

    def sign(self, pkey: int, data: bytes) -> bytes:
        ctx = self.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            sig, n = ctypes.create_string_buffer(64), _SZ(64)
            if (
                self.EVP_DigestSignInit(ctx, None, None, None, pkey) != 1
                or self.EVP_DigestSign(ctx, sig, ctypes.byref(n), data, len(data)) != 1
                or n.value != 64
            ):
                self.ERR_clear_error()
                raise RuntimeError("EVP_DigestSign failed")
            return sig.raw
        finally:
            self.EVP_MD_CTX_free(ctx)

    def verify(self, pkey: int, sig: bytes, data: bytes) -> bool:
        ctx = self.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            ok = bool(
                self.EVP_DigestVerifyInit(ctx, None, None, None, pkey) == 1
                and self.EVP_DigestVerify(ctx, sig, len(sig), data, len(data)) == 1
            )
            if not ok:  # 0: a bad signature; < 0: an error; both leave queue entries
                self.ERR_clear_error()
            return ok
        finally:
            self.EVP_MD_CTX_free(ctx)

    def free(self, pkey: int) -> None:
        self.EVP_PKEY_free(pkey)

    if TYPE_CHECKING:  # set in __init__ from _SIGNATURES

        def __getattr__(self, name: str) -> ctypes._CFunctionType: ...


class NativePublicKey:
    __slots__ = ("_lib", "_pkey", "_raw")

    def __init__(self, lib: Lib, raw: bytes) -> None:
        self._pkey = 0
        self._pkey, self._lib, self._raw = lib.new_key(bytes(raw), private=False), lib, bytes(raw)

    def __del__(self) -> None:
        if self._pkey:
            self._lib.free(self._pkey)
            self._pkey = 0

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def verifies(self, signature: bytes, data: bytes) -> bool:
        return len(signature) == 64 and self._lib.verify(self._pkey, bytes(signature), data)

    def verify(self, signature: bytes, data: bytes, /) -> None:
        if not self.verifies(signature, data):
            raise InvalidSignature


class NativePrivateKey:
    __slots__ = ("_lib", "_pkey", "_pub")

    def __init__(self, lib: Lib, seed: bytes) -> None:
        self._pkey = 0
        self._pkey, self._lib = lib.new_key(bytes(seed), private=True), lib
        self._pub = NativePublicKey(lib, lib.raw_public(self._pkey))

    def __del__(self) -> None:
        if self._pkey:
            self._lib.free(self._pkey)
            self._pkey = 0

    def sign(self, data: bytes, /) -> bytes:
        return self._lib.sign(self._pkey, bytes(data))

    def public_key(self) -> NativePublicKey:
        return self._pub


def _mapped_libcrypto() -> str | None:
    """The path of the libcrypto already mapped into this process (Linux), or None."""
    import ssl  # noqa: F401  (its _ssl extension maps libcrypto; asyncio has imported it)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5]).startswith("libcrypto.so"):
                    return fields[5].strip()
    except OSError:
        return None
    return None


def _self_test(lib: Lib) -> bool:
    key = NativePrivateKey(lib, _T1_SEED)
    pub = key.public_key()
    tampered = _T1_SIG[:-1] + bytes([_T1_SIG[-1] ^ 1])
    return (
        pub.public_bytes_raw() == _T1_PUB
        and key.sign(b"") == _T1_SIG
        and pub.verifies(_T1_SIG, b"")
        and not pub.verifies(tampered, b"")
        and not pub.verifies(_T1_SIG, b"x")
    )


@functools.cache
def native_lib() -> Lib | None:
    """The loaded libcrypto when it does Ed25519 right, else None (use cryptography)."""
    path = _mapped_libcrypto()
    if path is None:
        return None
    try:
        lib = Lib(ctypes.CDLL(path, mode=os.RTLD_NOLOAD))
        return lib if _self_test(lib) else None
    except (OSError, AttributeError, ValueError, RuntimeError, MemoryError):
        return None


# --- keys -----------------------------------------------------------------------------


def _pem_der(data: bytes, label: str) -> bytes | None:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if j < 0 or text[:i].strip() or text[j + len(end) :].strip():
        return None
    try:
        return base64.b64decode("".join(text[i + len(begin) : j].split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def private_from_seed(seed: bytes, *, native: bool = True) -> SignKey:
    lib = native_lib() if native else None
    if lib is not None:
        return NativePrivateKey(lib, seed)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def public_from_raw(raw: bytes, *, native: bool = True) -> VerifyKey:
    lib = native_lib() if native else None
    if lib is not None:
        return NativePublicKey(lib, raw)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_pem(data: bytes, *, native: bool = True) -> SignKey:
    """A PKCS#8 PEM Ed25519 private key (unencrypted). Raises ``ValueError``."""
    der = _pem_der(data, "PRIVATE KEY")
    if native and der is not None and len(der) == 48 and der[:16] == PKCS8_PREFIX:
        return private_from_seed(der[16:])
    return crypto_private(data)


def load_public_pem(data: bytes, *, native: bool = True) -> VerifyKey:
    """A SubjectPublicKeyInfo PEM Ed25519 public key. Raises ``ValueError``."""
    der = _pem_der(data, "PUBLIC KEY")
    if native and der is not None and len(der) == 44 and der[:12] == SPKI_PREFIX:
        return public_from_raw(der[12:])
    return crypto_public(data)


def crypto_private(data: bytes) -> Ed25519PrivateKey:
    """cryptography's key from a PKCS#8 PEM (any form it reads). Raises ``ValueError``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def crypto_public(data: bytes) -> Ed25519PublicKey:
    """cryptography's key from a SubjectPublicKeyInfo PEM. Raises ``ValueError``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(data)
    except ValueError as e:
        raise ValueError(f"not a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def _pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def public_pem(key: VerifyKey) -> str:
    """SubjectPublicKeyInfo PEM, as cryptography writes it."""
    return _pem("PUBLIC KEY", SPKI_PREFIX + key.public_bytes_raw())


def new_private_pem() -> bytes:
    """A new key as PKCS#8 PEM: an Ed25519 private key is 32 random bytes (RFC 8032
    section 5.1.5), from the kernel's CSPRNG."""
    return _pem("PRIVATE KEY", PKCS8_PREFIX + os.urandom(32)).encode("ascii")


def verifies(key: VerifyKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is the key's signature of ``data``."""
    if isinstance(key, NativePublicKey):
        return key.verifies(signature, data)
    from cryptography.exceptions import InvalidSignature as CryptoInvalid

    try:
        key.verify(signature, data)
    except (CryptoInvalid, InvalidSignature):
        return False
    return True
