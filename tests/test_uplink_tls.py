"""mqtts:// against a Mosquitto TLS listener with a CA made by the fixture."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.jws import Signer
from agent.uplink import MqttSettings, Uplink
from agent.verify import verify_async
from tests.support.aio import await_until
from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.support.uplink_kit import PREFIX, SITE, Collector, MemStore, add, check_stream


@pytest.fixture
def ex() -> Iterator[ThreadPoolExecutor]:
    e = ThreadPoolExecutor(max_workers=1)
    yield e
    e.shutdown(wait=True)


def settings(url: str, **kw: str | None) -> MqttSettings:
    return MqttSettings(url=url, topic_prefix=PREFIX, site=SITE, **kw)  # type: ignore[arg-type]


def drain_over(m: Mosquitto, s: MqttSettings, ex: ThreadPoolExecutor, n: int = 30) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()
    for i in range(n):
        add(store, signer, "interval", {"i": i})
    col = Collector(m.port)

    async def main() -> None:
        up = Uplink(s, signer, store, ex, boot=1, backoff_base=0.1, backoff_cap=0.5)
        task = asyncio.create_task(up.run())
        await await_until(lambda: store.backlog() == 0, 10, "drain over TLS")
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
        end = time.monotonic() + 5
        while len(col.on("interval")) < n and time.monotonic() < end:
            time.sleep(0.02)
        check_stream(col.on("interval"), signer, n)
    finally:
        col.close()


def test_mqtts_with_the_right_ca(
    mosquitto_tls: Mosquitto,
    ex: ThreadPoolExecutor,
) -> None:
    assert mosquitto_tls.pki is not None
    drain_over(
        mosquitto_tls, settings(mosquitto_tls.tls_url, ca_file=str(mosquitto_tls.pki.ca_file)), ex
    )


def test_wrong_ca_is_refused_with_a_clear_error(
    mosquitto_tls: Mosquitto,
    ex: ThreadPoolExecutor,
) -> None:
    pki = mosquitto_tls.pki
    assert pki is not None
    signer = Signer(Ed25519PrivateKey.generate())
    store = MemStore()

    async def main() -> Uplink:
        s = settings(mosquitto_tls.tls_url, ca_file=str(pki.wrong_ca_file))
        up = Uplink(s, signer, store, ex, boot=1, backoff_base=0.05, backoff_cap=0.2)
        task = asyncio.create_task(up.run())
        await await_until(lambda: up.last_error is not None, 10, "an error")
        await asyncio.sleep(0.5)
        assert not up.connected and up.connects == 0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return up

    up = asyncio.run(main())
    assert up.last_error is not None
    assert "does not verify against ca_file" in up.last_error
    assert str(pki.wrong_ca_file) in up.last_error
    # the head-end tool refuses the same way, exit 2
    err = io.StringIO()
    rc = asyncio.run(
        verify_async(
            mosquitto_tls.tls_url,
            SITE,
            {},
            2,
            io.StringIO(),
            PREFIX,
            ca_file=str(pki.wrong_ca_file),
            err=err,
        )
    )
    assert rc == 2
    assert "certificate does not verify" in err.getvalue()


def test_client_certificate(tmp_path: Path, ex: ThreadPoolExecutor) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    m = Mosquitto(tmp_path / "b", tls=True, require_certificate=True)
    m.start()
    try:
        pki = m.pki
        assert pki is not None
        # without a client certificate the broker refuses
        signer = Signer(Ed25519PrivateKey.generate())

        async def refused() -> str | None:
            s = settings(m.tls_url, ca_file=str(pki.ca_file))
            up = Uplink(s, signer, MemStore(), ex, boot=1, backoff_base=0.05, backoff_cap=0.2)
            task = asyncio.create_task(up.run())
            await await_until(lambda: up.last_error is not None, 10, "an error")
            assert up.connects == 0
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return up.last_error

        assert asyncio.run(refused()) is not None
        s = settings(
            m.tls_url,
            ca_file=str(pki.ca_file),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        )
        drain_over(m, s, ex)
    finally:
        m.stop()


def test_username_and_password(tmp_path: Path, ex: ThreadPoolExecutor) -> None:
    import shutil

    if mosquitto_binary() is None or not (
        shutil.which("mosquitto_passwd") or Path("/usr/bin/mosquitto_passwd").exists()
    ):
        pytest.skip("mosquitto / mosquitto_passwd not installed")
    m = Mosquitto(tmp_path / "b", users={"agent": "s3cret", "collector": "c"})
    m.start()
    try:
        signer = Signer(Ed25519PrivateKey.generate())

        async def refused() -> str | None:
            s = settings(m.url, username="agent", password="wrong")
            up = Uplink(s, signer, MemStore(), ex, boot=1, backoff_base=0.05, backoff_cap=0.2)
            task = asyncio.create_task(up.run())
            await await_until(lambda: up.last_error is not None, 10, "an error")
            assert up.connects == 0
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return up.last_error

        err = asyncio.run(refused())
        assert err is not None and ("authori" in err.lower() or "password" in err.lower()), err
        store = MemStore()
        for i in range(5):
            add(store, signer, "event", {"i": i})

        async def accepted() -> None:
            s = settings(m.url, username="agent", password="s3cret")
            up = Uplink(s, signer, store, ex, boot=1, backoff_base=0.05, backoff_cap=0.2)
            task = asyncio.create_task(up.run())
            await await_until(lambda: store.backlog() == 0, 10, "drain with credentials")
            await up.shutdown()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(accepted())
    finally:
        m.stop()
