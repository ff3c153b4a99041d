"""The I/O around remote configuration and commands: runs the pure decisions of
``agent.remote`` against the live agent, persists what was accepted, answers every
message with a signed ack.

The handler sees the agent only through ``RemoteHost``: the few things a remote message
may read or change. ``agent.runner.Agent`` is one; a test can pass another.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent import limiter_override
from agent.config import Config, remote_view
from agent.degraded import StorageGuard
from agent.ed25519 import VerifyKey
from agent.jws import Signer, thumbprint
from agent.keys import load_verify_key
from agent.limiter_state import LimiterState, Override
from agent.remote import CMD_WINDOW_S, decide_cmd, decide_config, persist_overlay
from agent.rotation import Rotation
from agent.store import Store
from agent.uplink import Uplink
from drivers.types import Clock

log = logging.getLogger("dh.remote")
T = TypeVar("T")


class RemoteHost(Protocol):
    """What remote configuration and commands may see and do of the running agent."""

    @property
    def cfg(self) -> Config: ...
    @property
    def topic(self) -> str: ...  # the site's topic base
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> Store | None: ...  # None until opened (and while degraded)
    @property
    def storage(self) -> StorageGuard: ...
    @property
    def uplink(self) -> Uplink | None: ...
    @property
    def signer(self) -> Signer: ...
    @property
    def lstate(self) -> LimiterState: ...

    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...  # on the store thread
    async def emit_event(self, ev: dict[str, Any]) -> None: ...
    def apply_config(self, cfg: Config) -> None: ...
    def set_signer(self, signer: Signer) -> None: ...
    def poll_all_now(self) -> None: ...
    async def start_override(self, o: Override) -> None: ...  # persisted when it returns


def load_operator_keys(paths: tuple[Path, ...]) -> dict[str, VerifyKey]:
    keys: dict[str, VerifyKey] = {}
    for p in paths:
        try:
            k = load_verify_key(p)
        except (OSError, ValueError) as e:
            log.error("operator key %s unusable: %s", p, e)
            continue
        keys[thumbprint(k)] = k
    return keys


class RemoteHandler:
    def __init__(self, agent: RemoteHost, version: int) -> None:
        self.agent = agent
        self.version = version  # the last applied remote version (stale floor)
        self.conflict = ""  # why the stored overlay no longer applies ("" when it does)
        self.keys = load_operator_keys(agent.cfg.keys.operator_pubkeys)
        self.seen: dict[str, float] = {}
        self.lock = asyncio.Lock()  # one remote message at a time, in arrival order

    async def load_seen(self) -> None:
        st = self.agent.store
        assert st is not None
        raw = await self.agent.call(st.get_meta, "cmd_ids")
        try:
            self.seen = {str(k): float(v) for k, v in json.loads(raw or "{}").items()}
        except (ValueError, AttributeError):
            self.seen = {}

    async def handle(self, topic: str, payload: bytes) -> None:
        base = self.agent.topic
        async with self.lock:
            if topic == f"{base}/config/set":
                await self.on_config(payload)
            elif topic == f"{base}/cmd":
                await self.on_cmd(payload)

    async def publish_current(self) -> None:
        up = self.agent.uplink
        if up is not None:
            body: dict[str, Any] = {
                "version": 0 if self.conflict else self.version,  # the one in effect
                "config": remote_view(self.agent.cfg),
            }
            if self.conflict:  # the operator re-sends (a version above overlay_version)
                body["conflict"] = {"overlay_version": self.version, "reason": self.conflict}
            o = limiter_override.view(self.agent.lstate.override, self.agent.clock.wall())
            if o is not None:
                body["limit_override"] = o
            await up.publish_live("config", "config/current", body, qos=1, retain=True)

    async def on_config(self, payload: bytes) -> None:
        a = self.agent
        d = decide_config(
            payload, keys=self.keys, site=a.cfg.site.id, active_version=self.version, active=a.cfg
        )
        if d.accepted and d.config is not None and d.version is not None:
            new_cfg, new_version = d.config, d.version
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, persist_overlay, new_cfg, new_version
                )
            except OSError as e:
                d = type(d)(
                    {
                        "version": d.version,
                        "result": "rejected",
                        "reason": f"invalid: (store): {e}",
                    },
                    False,
                )
            else:
                self.version = new_version
                self.conflict = ""
                a.apply_config(new_cfg)
                await a.emit_event(
                    {
                        "kind": "config_applied",
                        "version": new_version,
                        "config": remote_view(new_cfg),
                    }
                )
                await self.publish_current()
        if not d.accepted:
            log.warning("config/set rejected: %s", d.ack.get("reason"))
        if a.uplink is not None:
            await a.uplink.publish_live("ack", "config/ack", d.ack, qos=1)

    async def on_cmd(self, payload: bytes) -> None:
        a = self.agent
        now = a.clock.wall()
        d = decide_cmd(
            payload, keys=self.keys, site=a.cfg.site.id, now=now, seen_ids=set(self.seen)
        )
        ack = dict(d.ack)
        if d.accepted and d.command is not None:
            # remember the id before acting: a replay after a crash is still a replay
            self.seen = {k: t for k, t in self.seen.items() if now - t < 2 * CMD_WINDOW_S}
            self.seen[str(d.command["id"])] = now
            assert a.store is not None
            await a.call(a.store.set_meta, "cmd_ids", json.dumps(self.seen))
            try:
                extra = await self.run_command(d.command)
                ack.update(extra)
            except Exception as e:  # a failing command is answered, never fatal
                log.exception("command %s failed", d.command.get("cmd"))
                ack.update({"result": "rejected", "reason": f"failed: {e}"})
        else:
            log.warning("cmd rejected: %s", ack.get("reason"))
        if a.uplink is not None:
            await a.uplink.publish_live("ack", "cmd/ack", ack, qos=1)

    async def run_command(self, c: dict[str, Any]) -> dict[str, Any]:
        a = self.agent
        name = c["cmd"]
        if name == "poll_now":
            a.poll_all_now()
            return {}
        if name == "resend":
            assert a.store is not None
            n = await a.call(a.store.mark_unsent, c["stream"], c["from_seq"], c["to_seq"])
            if a.uplink is not None:
                a.uplink.wake()
            return {"count": n}
        if name == "rotate_key":
            return await self.rotate_key()
        if name == "limit_override":
            return await self.limit_override(c)
        raise ValueError(f"unknown command {name}")

    async def limit_override(self, c: dict[str, Any]) -> dict[str, Any]:
        """A timed lower limit: checked against the contract, persisted with the
        limiter's state (durable) before it is acknowledged, announced by an event."""
        a = self.agent
        o, why = limiter_override.parse(c, a.clock.wall())
        if o is not None and not why:
            lim = a.cfg.contract
            why = limiter_override.admit(o, lim.flow_limit_m3h, lim.power_limit_kw)
        if o is None or why:
            return {"result": "rejected", "reason": why}
        await a.start_override(o)
        view = limiter_override.view(o, a.clock.wall())
        await a.emit_event({"kind": "limit_override_start", "source": "limiter", **(view or {})})
        await self.publish_current()
        return {"limit_override": view}

    async def rotate_key(self) -> dict[str, Any]:
        """New agent key, announced under the old key first (``agent.rotation``)."""
        return await self.rotation().start()

    def rotation(self) -> Rotation:
        a = self.agent

        async def announced(kid: str) -> bool:
            ok, bodies = await a.storage.run("rotation", Store.event_bodies)
            return bool(ok) and any(
                b.get("kind") == "key_rotated" and b.get("new_kid") == kid for b in bodies or []
            )

        async def delivered() -> bool:
            ok, backlog = await a.storage.run("rotation", Store.backlog)
            return bool(ok) and not (backlog or {}).get("event", 0)

        return Rotation(
            a.cfg.storage.path.parent,
            lambda: a.signer,
            a.set_signer,
            a.emit_event,
            announced,
            delivered,
        )
