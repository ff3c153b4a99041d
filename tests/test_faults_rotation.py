"""Issue 13 item 8: `rotate_key` interrupted (the announcement never stored: a crash, a
full disk) and the agent restarted: no message is ever signed by a key that no stored
announcement, signed by the old key, introduced before it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent.jws import thumbprint
from agent.keys import load_public
from agent.operator import cmd_message
from agent.runner import Agent
from agent.store import Store
from agent.verify import Checker
from tests.support.mosquitto import Mosquitto
from tests.support.remote_rig import BASE, SITE, rig


def stored_in_order(db: Path) -> list[tuple[str, bytes]]:
    st = Store(db)
    try:
        msgs = [*st.messages("interval", 1, 10**9), *st.messages("event", 1, 10**9)]
    finally:
        st.close()
    return [(f"{BASE}/{m.stream}", m.payload.encode()) for m in sorted(msgs, key=lambda m: m.id)]


def test_an_interrupted_rotation_never_signs_with_an_unannounced_key(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: Any
) -> None:
    original = Agent.emit_event

    async def crash_on_announcement(self: Agent, ev: dict[str, Any]) -> None:
        if ev.get("kind") == "key_rotated":
            raise RuntimeError("power cut")  # the process dies before the event is stored
        await original(self, ev)

    async def main() -> str:
        async with rig(tmp_path, mosquitto) as r:
            old_kid = r.agent.signer.kid
            monkeypatch.setattr(Agent, "emit_event", crash_on_announcement)
            n = len(r.head.bodies("cmd/ack"))
            await r.send("cmd", cmd_message(r.operator, SITE, {"cmd": "rotate_key"}, time.time()))
            await r.ack("cmd/ack", n)
            monkeypatch.setattr(Agent, "emit_event", original)
            assert r.agent.signer.kid == old_kid
        # restarted: the rotation completes, announced under the old key first
        async with rig(tmp_path, mosquitto) as r2:
            await r2.wait(lambda: r2.agent.signer.kid != old_kid, 30)
            n_int = len(r2.head.raw.get("interval", []))
            await r2.wait(lambda: len(r2.head.raw.get("interval", [])) > n_int + 1, 30)
            return r2.agent.signer.kid

    new_kid = asyncio.run(main())
    pub = load_public(tmp_path / "agent.pub")
    checker = Checker(SITE, {thumbprint(pub): pub})
    results = [checker.check(t, raw) for t, raw in stored_in_order(tmp_path / "agent.db")]
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    assert new_kid in checker.keys  # learnt from the announcement
    assert any(r["kid"] == new_kid for r in results)
