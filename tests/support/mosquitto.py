"""A real Mosquitto broker for tests and benchmarks, on a free 127.0.0.1 port.

``Mosquitto(workdir)`` writes a config into ``workdir`` (``listener PORT 127.0.0.1``,
``allow_anonymous true`` or, with ``users``, a password file; persistence off unless asked
for, then in ``workdir``; with ``acl``, that text as its ACL file, read again at ``restart()``)
and, with ``tls=True``, a second listener with a test PKI made here (``make_pki``: CA,
server certificate for 127.0.0.1/localhost, client certificate, an unrelated "wrong" CA).

    m = Mosquitto(tmp_path, tls=True); m.start(); m.url; m.tls_url; m.stop(); m.restart()

The pytest fixture ``mosquitto`` yields a started plain broker and stops it after the
test; ``mosquitto_durable`` likewise with persistence on (a subscriber's persistent session
and its queued messages survive ``restart()``: outage tests need the subscriber side to
lose nothing, so that any loss seen is the agent's); ``mosquitto_tls`` with the TLS
listener. All skip the test when the mosquitto binary is missing. ``tests/conftest.py``
registers them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.broker import listening, spawn_mosquitto
from agent.broker import mosquitto_binary as mosquitto_binary  # re-exported
from tests.support.net import free_port as free_port  # re-exported

# --- test PKI -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca_file: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(ca_key, hashes.SHA256()), key


def make_pki(folder: Path) -> Pki:
    """A CA, a server cert (127.0.0.1, localhost), a client cert, and an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("dh-agent test CA")
    srv, srv_key = _leaf("127.0.0.1", ca, ca_key, server=True)
    cli, cli_key = _leaf("dh-agent test client", ca, ca_key, server=False)
    wrong, _ = _ca("unrelated CA")
    pem = serialization.Encoding.PEM
    pki = Pki(
        ca_file=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        wrong_ca_file=folder / "wrong-ca.crt",
    )
    pki.ca_file.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(srv.public_bytes(pem))
    _write_key(pki.server_key, srv_key)
    pki.client_cert.write_bytes(cli.public_bytes(pem))
    _write_key(pki.client_key, cli_key)
    pki.wrong_ca_file.write_bytes(wrong.public_bytes(pem))
    return pki


# --- the broker -----------------------------------------------------------------------


class Mosquitto:
    """One mosquitto process; keeps its ports across ``restart()``."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = False,
        require_certificate: bool = False,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        binary: str | None = None,
        acl: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or mosquitto_binary()
        if self.binary is None:
            raise FileNotFoundError("mosquitto binary not found")
        self.tls = tls
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.users = users
        self.acl = acl  # the text of an ACL file (mosquitto's ``acl_file`` format), or None
        self.port = 0
        self.tls_port = 0
        self.pki: Pki | None = make_pki(self.workdir / "pki") if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root: do not drop privileges
            f"listener {self.port} 127.0.0.1",
            *self._auth_lines(),
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %H:%M:%S",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",  # as a production broker on LAN-speed links would
        ]
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.pki is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.pki.ca_file}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _auth_lines(self) -> list[str]:
        """Anonymous, or with ``users`` a password file made by mosquitto_passwd."""
        if not self.users:
            return ["allow_anonymous true"]
        pw = self.workdir / "passwd"
        if not pw.exists():
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([tool, "-b", str(pw), user, password], check=True)
            pw.chmod(0o600)
        return ["allow_anonymous false", f"password_file {pw}"]

    def _spawn(self) -> bool:
        self._write_config()
        self.proc = spawn_mosquitto(str(self.binary), self.conf, self.log_path, new_session=True)
        deadline = time.monotonic() + 10
        ports = [self.port] + ([self.tls_port] if self.pki is not None else [])
        return all(listening(p, deadline, self.proc) for p in ports)

    def start(self) -> None:
        """Start on fresh free ports (a few tries, in case another process takes one)."""
        if self.running:
            return
        for _ in range(5):
            self.port = free_port()
            self.tls_port = free_port() if self.pki is not None else 0
            if self._spawn():
                return
            self._kill()
        raise RuntimeError(f"mosquitto did not start; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: retained messages are saved when persistence is on)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL)."""
        self._kill()

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port(s)."""
        self.stop()
        deadline = time.monotonic() + 10
        while True:
            if self._spawn():
                return
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not restart; log:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _skip_without_binary() -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")


def _broker(folder: Path, *, tls: bool = False, persistence: bool = False) -> Iterator[Mosquitto]:
    _skip_without_binary()
    m = Mosquitto(folder, tls=tls, persistence=persistence)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _broker(tmp_path / "mosquitto")


@pytest.fixture
def mosquitto_durable(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _broker(tmp_path / "mosquitto-durable", persistence=True)


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from _broker(tmp_path / "mosquitto-tls", tls=True)
