"""The periodic loops of ``Agent`` (``agent.runner``) and what they publish: the live
snapshot (built from the pipeline's state, ``agent.snapshot``) to its file and as
telemetry, ``config/current`` on every connection, the hourly store maintenance and the
systemd watchdog pings."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, TypeVar

from agent.store import Store
from agent.waits import wait_event

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from agent.commands import RemoteHandler
    from agent.config import Config
    from agent.degraded import StorageGuard
    from agent.limiter import LimiterParams, LimiterState
    from agent.logs import RateLimiter
    from agent.monitors import Monitors
    from agent.notify import Notifier
    from agent.runner_channel import Channel
    from agent.uplink import Uplink
    from drivers.types import Clock

log = logging.getLogger("dh.agent")
T = TypeVar("T")


def _profile_name(device: Any) -> str:
    """A device's profile name (Modbus: a loaded register map; M-Bus: its name)."""
    prof = device.spec.profile
    return prof if isinstance(prof, str) else str(prof.name)


def release_free_memory() -> None:
    """Hand the heap freed by imports and start-up back to the OS (glibc malloc_trim):
    a daemon on a small box should not keep its start-up peak for years."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class LoopsMixin:
    cfg: Config
    clock: Clock
    storage: StorageGuard
    uplink: Uplink | None
    remote: RemoteHandler
    boot: int
    channels: dict[str, Channel]
    monitors: Monitors
    notifier: Notifier
    errlog: RateLimiter
    lparams: LimiterParams
    lstate: LimiterState
    meter: Channel | None
    limiting: bool
    last_records: dict[str, dict[str, Any]]
    live_now: asyncio.Event
    stopping: asyncio.Event

    if TYPE_CHECKING:

        async def pause(self, seconds: float) -> bool: ...
        async def call(self, fn: Callable[..., T], *args: Any) -> T: ...
        async def emit_event(self, ev: dict[str, Any]) -> None: ...

    async def announce_loop(self) -> None:
        """Publish the retained config/current on every (re)connection."""
        assert self.uplink is not None
        was = False
        while await self.pause(1.0):  # a reconnection is noticed within a second
            now = self.uplink.connected
            if now and not was:
                await self.remote.publish_current()
            was = now

    async def maintenance_loop(self) -> None:
        while await self.pause(3600):
            now = self.clock.wall()
            ok, done = await self.storage.run("prune", Store.prune, now)
            release_free_memory()
            if not ok or done is None:
                continue
            lost = {k: v for k, v in done.items() if k != "samples" and v}
            if lost:
                await self.emit_event({"kind": "data_pruned", "lost": lost})

    def snapshot(self, backlog: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The live snapshot (agent/snapshot.py) from the pipeline's state."""
        from agent import snapshot  # loaded after the first connect (start-up time)

        cfg, c, up = self.cfg, self.cfg.contract, self.uplink
        return snapshot.build_snapshot(
            site=cfg.site.id,
            wall=self.clock.wall(),
            mono=self.clock.mono(),
            clock_synced=self.clock.synced(),
            boot=self.boot,
            pid=os.getpid(),
            config_version=self.remote.version,
            period_s=cfg.site.period_s,
            contract={"flow_limit_m3h": c.flow_limit_m3h, "power_limit_kw": c.power_limit_kw,
                      "enforce": c.enforce},
            delivery=dataclasses.asdict(cfg.delivery),
            devices=[
                snapshot.DeviceView(
                    name=name, role=ch.params.role, transport=ch.device.spec.transport,
                    profile=_profile_name(ch.device), health=str(ch.device.health),
                    last=ch.last, counters=ch.device.counters,
                    identity=snapshot.identity_of(ch.device),
                )
                for name, ch in self.channels.items()
            ],
            limiter=snapshot.limiter_view(
                self.lparams, self.lstate, self.meter is not None
                and (c.flow_limit_m3h is not None or c.power_limit_kw is not None),
                self.limiting,
            ),
            alarms=self.monitors.active_since(),
            uplink=None if up is None else {"connected": up.connected, "backlog": backlog,
                                            "last_publish": up.last_publish},
            last_records=self.last_records,
        )  # fmt: skip

    async def live_loop(self) -> None:
        """Write the live snapshot every ``live.every_s`` and after each closed period."""
        from agent import snapshot

        path = self.cfg.live.path
        while not self.stopping.is_set():
            try:
                _, backlog = await self.storage.run("backlog", Store.backlog)
                data = snapshot.dumps(self.snapshot({"interval": 0, "event": 0, **(backlog or {})}))
                await self.call(snapshot.write_atomic, path, data)
            except Exception as e:  # the page is a convenience: never stop the agent
                ok, n = self.errlog.allow("live", self.clock.mono())
                if ok:
                    log.warning("live snapshot %s not written: %s (%d suppressed)", path, e, n)
            self.live_now.clear()
            await wait_event(self.live_now, self.cfg.live.every_s)

    async def telemetry_loop(self) -> None:
        from agent import snapshot

        assert self.uplink is not None
        while await self.pause(self.cfg.mqtt.telemetry_s):
            body = snapshot.telemetry_body(self.snapshot())
            body["storage"] = self.storage.state.view()
            body["refused_subscriptions"] = dict(self.uplink.refused_subscriptions)
            await self.uplink.publish_live("telemetry", "telemetry", body)

    async def watchdog_loop(self) -> None:
        every = (self.notifier.watchdog_s or 0) / 2
        if every <= 0:
            return
        while True:
            self.notifier.watchdog()
            if not await self.pause(every):
                return
