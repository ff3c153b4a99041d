"""Events queued by several tasks at once are stored once each, in order: the agent's
``flush_events`` is called by every emitter and by the storage loop, concurrently."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.degraded import StorageGuard
from agent.jws import Signer, b64u_decode, envelope
from agent.runner_storage import StorageMixin
from agent.store import Store

T = TypeVar("T")


class _Host(StorageMixin):
    """The storage side of the agent with a real store on its own thread."""

    def __init__(self, db: Path) -> None:
        self.ex = ThreadPoolExecutor(max_workers=1)
        self.topic = "dh/v1/s1"
        self.uplink = None
        self.signer = Signer(Ed25519PrivateKey.generate())
        self.storage = StorageGuard(self.call, lambda: Store(db), db)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.ex, fn, *args)

    def sign_body(self, stream: str) -> Callable[[dict[str, Any], int, str | None], str]:
        def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
            return self.signer.sign(envelope("s1", stream, seq, prev, 1e9, body))

        return sign


def test_concurrent_flushes_store_each_event_once_in_order(tmp_path: Path) -> None:
    host = _Host(tmp_path / "agent.db")

    async def main() -> list[int]:
        assert await host.storage.open()
        for i in range(20):
            host.storage.queue_event({"kind": "test", "i": i})
        # an emitter and the storage loop at the same moment, several times over
        await asyncio.gather(*(host.flush_events() for _ in range(4)))
        assert not host.storage.events
        st = host.storage.store
        assert st is not None
        msgs = await host.call(st.messages, "event", 1, 100)
        await host.call(st.close)
        return [json.loads(b64u_decode(m.payload.split(".")[1]))["body"]["i"] for m in msgs]

    try:
        assert asyncio.run(main()) == list(range(20))
    finally:
        host.ex.shutdown()
