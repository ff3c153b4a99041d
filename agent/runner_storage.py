"""The degraded-storage side of ``Agent`` (``agent.runner``): opening the store late,
loading a device's aggregator state when the store is there, writing the events and
samples kept in memory once it works again, and reporting the mode (``agent.degraded``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

from agent.store import SampleRow, Store
from agent.uplink_drain import Refusal, refusal_event_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    from agent.commands import RemoteHandler
    from agent.config import Config
    from agent.degraded import StorageGuard
    from agent.meters import MeterWatch
    from agent.outbox import Outgoing
    from agent.runner_channel import Channel
    from agent.uplink import Uplink
    from drivers.types import Clock

log = logging.getLogger("dh.agent")


class StorageMixin:
    storage: StorageGuard
    store: Store | None
    uplink: Uplink | None
    boot: int
    early_boot: Future[int | None] | None  # the boot counted by the early opening
    remote: RemoteHandler
    channels: dict[str, Channel]
    topic: str
    clock: Clock
    cfg: Config
    meters: MeterWatch
    pipeline_ready: asyncio.Event

    if TYPE_CHECKING:

        async def pause(self, seconds: float) -> bool: ...
        def sign_body(self, stream: str) -> Callable[[dict[str, Any], int, str | None], str]: ...
        async def emit_event(self, ev: dict[str, Any]) -> None: ...
        async def flush_samples(self) -> None: ...
        async def save_limiter(self) -> None: ...

    async def flush_events(self) -> None:
        g = self.storage
        topic, sign = f"{self.topic}/event", self.sign_body("event")
        stored = 0
        # one flusher at a time: two (an emitter and the storage loop) would both store
        # the head event, then pop twice (a duplicate, and a lost or failed pop)
        async with g.events_lock:
            while g.events:
                body = g.events[0]
                ok, _ = await g.run("event", Store.add_event, body, topic, sign)
                if not ok:
                    break
                g.events.popleft()
                stored += 1
        if stored and self.uplink is not None:
            self.uplink.wake()

    async def on_store_open(self, store: Store) -> None:
        """The store is open (at start-up, or later after a degraded start)."""
        self.store = store
        early, self.early_boot = self.early_boot, None  # counted by the early opening
        boot = await asyncio.wrap_future(early) if early is not None else None
        if boot is None:
            ok, boot = await self.storage.run("boot", lambda st: st.next_boot())
            boot = boot if ok else None
        self.boot = int(boot) if boot is not None else store.boot() + 1
        if self.uplink is not None:
            self.uplink.boot = self.boot
        if self.pipeline_ready.is_set():  # else build_pipeline does it
            with contextlib.suppress(Exception):
                await self.remote.load_seen()

    async def load_channel(self, ch: Channel) -> bool:
        """The aggregator state and the samples after it, from the store (once)."""
        from agent import aggregator as agg
        from agent.meters import restored_sample

        name = ch.params.device

        def read(st: Store) -> tuple[str | None, list[SampleRow]]:
            raw = st.load_agg_state(name)
            state = agg.AggState.from_json(raw) if raw else agg.AggState.initial()
            since = state.boundary if state.boundary is not None else 0.0
            return raw, st.samples_since(name, float(since))

        ok, got = await self.storage.run("load", read)
        if not ok or got is None:
            return False
        raw, rows = got
        ch.state = agg.AggState.from_json(raw) if raw else agg.AggState.initial()
        stored = [restored_sample(r.ts, r.values, r.flags) for r in rows if r.ts is not None]
        newest = max((x.ts for x in stored), default=-math.inf)
        ch.pending = stored + [x for x in ch.pending if x.ts > newest]
        self.meters.seed(name, ch.state, ch.pending)
        ch.loaded = True
        return True

    async def on_refused(self, m: Outgoing, r: Refusal) -> None:
        """A stored message the broker refused for good: a `message_refused` event (none for
        a refused `message_refused` event, so a refused event topic cannot loop)."""
        ev = refusal_event_of(m, r)
        if ev is None:
            return
        try:
            await self.emit_event(ev)
        except Exception as e:  # the refusal stays recorded in the store and the log
            log.warning("message_refused event not stored: %s", e)

    async def storage_loop(self) -> None:
        """Degraded mode: try the store again, write what was kept, report the change."""
        g = self.storage
        while await self.pause(min(5.0, g.retry_s)):
            if g.state.active or g.store is None or g.events or g.samples:
                await self.flush_events()
                await self.flush_samples()
                if g.state.active and g.state.may_try(self.clock.mono()):
                    wall = self.clock.wall()
                    await g.run("probe", Store.set_meta, "storage_ok", repr(wall))
            if g.recovered_after is not None:
                lasted, g.recovered_after = g.recovered_after, None
                ev = {"kind": "storage_recovered", "degraded_s": round(lasted, 1)}
                ev |= {"dropped_events": g.dropped_events, "dropped_samples": g.dropped_samples}
                await self.emit_event(ev)
            if g.replaced is not None:
                kept, g.replaced = g.replaced, None
                await self.emit_event({"kind": "storage_replaced", "kept_as": str(kept)})

    async def flush_loop(self) -> None:
        while await self.pause(self.cfg.storage.flush_s):
            await self.flush_samples()
            await self.save_limiter()
