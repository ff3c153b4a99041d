"""Ed25519 key files: ``keygen`` and loading.

``NAME.key``: PKCS#8 PEM, unencrypted, mode 0600. ``NAME.pub``: SubjectPublicKeyInfo PEM,
mode 0644. Both are written to a temporary file in the same folder and renamed into
place, so a crash never leaves half a key.

``load_private`` / ``load_public`` give ``cryptography`` keys (the tools and tests);
``load_signing_key`` / ``load_verify_key`` give what the running agent uses: keys on the
libcrypto already loaded (``agent.ed25519``), so ``dh-agent run`` never imports
``cryptography`` (about 8 MB of RSS) when that library does Ed25519.
"""

from __future__ import annotations

import contextlib
import logging
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from agent import ed25519
from agent.atomicfile import write_atomic
from agent.jws import thumbprint

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

log = logging.getLogger(__name__)


def keygen(out_dir: Path, name: str = "agent", force: bool = False) -> str:
    """Write ``NAME.key`` and ``NAME.pub`` in ``out_dir``; return the key id.

    Raises ``FileExistsError(path)`` if either file exists and ``force`` is False.
    """
    out_dir = Path(out_dir)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if not force:
        for p in (key_path, pub_path):
            if p.exists() or p.is_symlink():
                raise FileExistsError(str(p))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    write_atomic(key_path, pem, mode=0o600)
    write_atomic(pub_path, pub, mode=0o644)
    return thumbprint(key.public_key())


def _read_private(path: Path) -> bytes:
    data = path.read_bytes()
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: private key is readable by group/others; chmod 600 it", path)
    return data


def load_private(path: Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key; warns if group/others can read it."""
    path = Path(path)
    data = _read_private(path)
    try:
        return ed25519.crypto_private(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def load_public(path: Path) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key."""
    path = Path(path)
    try:
        return ed25519.crypto_public(path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def load_signing_key(path: Path) -> ed25519.SignKey:
    """``load_private`` for the running agent: a key on the loaded libcrypto when it does
    Ed25519, else cryptography's."""
    path = Path(path)
    data = _read_private(path)
    try:
        return ed25519.load_private_pem(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def load_verify_key(path: Path) -> ed25519.VerifyKey:
    """``load_public`` for the running agent (see ``load_signing_key``)."""
    path = Path(path)
    try:
        return ed25519.load_public_pem(path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
