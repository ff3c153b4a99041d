"""`dh-agent run`: the whole pipeline under one asyncio TaskGroup.

    drivers -> poller -> (stamp) -> aggregator -> store -> uplink
                      \\-> limiter -> actuator
                      \\-> monitors -> events -> store -> uplink

The decisions live in pure modules (aggregator, limiter, monitors, config); the agent
only moves readings between them and does the I/O. ``Agent`` is assembled from mixins, one
per side: ``runner_pipeline`` (poll, readings, records), ``runner_limiter`` (limiter and
actuator), ``runner_loops`` (snapshot, telemetry, maintenance, watchdog, announce) and
``runner_storage`` (degraded storage); ``runner_channel`` holds a device's channel. The
store is synchronous and confined to one writer thread (``self.db``); nothing blocks the
event loop.

Start-up: only what the first publish needs (config, key, store, uplink) is imported and
built before the uplink's first connection attempt; the aggregator, limiter, monitors,
device pool, remote-command handler and devices (with the Modbus stack) follow it
(``build_pipeline``, ``open_devices``: their imports are in those methods and in the mixins'
methods), so they do not delay the first publish (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from agent.clock import SyncClock
from agent.degraded import GuardedOutbox, StorageGuard
from agent.events import event_body
from agent.jws import Signer, envelope
from agent.keys import load_signing_key
from agent.logs import RateLimiter
from agent.notify import Notifier
from agent.protocol import ACTUATOR, HEAT_METER
from agent.remote import apply_overlay
from agent.runner_channel import Channel, record_params, to_sample
from agent.runner_limiter import LimiterMixin, limiter_params
from agent.runner_loops import LoopsMixin, release_free_memory
from agent.runner_pipeline import PipelineMixin
from agent.runner_storage import StorageMixin
from agent.store import SampleRow, Store
from agent.store_early import EarlyStore, open_store
from agent.uplink import MqttSettings, Uplink
from agent.waits import Signal, wait_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.commands import RemoteHandler
    from agent.config import Config
    from agent.limiter import LimiterParams, LimiterState
    from agent.meters import MeterWatch
    from agent.monitors import MonitorParams, Monitors
    from agent.plausibility import Plausibility
    from agent.stamping import ReadingStamper
    from drivers.device import Device, DevicePool
    from drivers.types import Clock

__all__ = [
    "Agent",
    "Channel",
    "limiter_params",
    "monitor_params",
    "record_params",
    "release_free_memory",
    "run_agent",
    "to_sample",
]

log = logging.getLogger("dh.agent")
T = TypeVar("T")


def monitor_params(cfg: Config) -> MonitorParams:
    from agent.monitors import MonitorParams

    d = cfg.delivery
    return MonitorParams(
        supply_min_c=d.supply_min_c,
        supply_max_c=d.supply_max_c,
        dp_min_kpa=d.dp_min_kpa,
        cooling_min_c=d.cooling_min_c,
        return_max_c=d.return_max_c,
        outage_supply_c=d.outage_supply_c,
        debounce_s=d.debounce_s,
    )


class Agent(StorageMixin, PipelineMixin, LimiterMixin, LoopsMixin):
    """The agent: its parts are the mixins (storage, pipeline, limiter, loops); this class
    holds the state they share, opens everything and runs the tasks."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock | None = None,
        config_version: int = 0,
        config_conflict: str = "",
        early: EarlyStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_version = config_version
        self.clock: Clock = clock if clock is not None else SyncClock()
        # the store's one thread: the early opening's (``cmd_run``), which may have the
        # store open already, or a new one
        taken = early.take(cfg.storage) if early is not None else None
        self.db = (
            early.executor
            if early is not None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        )
        self.early_boot: Future[int | None] | None = taken[1] if taken else None
        self.store: Store | None = None
        self.uplink: Uplink | None = None
        rotated = cfg.storage.path.parent / "agent-rotated.key"
        self.signer = Signer(load_signing_key(rotated if rotated.exists() else cfg.keys.agent_key))
        self.pool: DevicePool  # build_pipeline
        self.channels: dict[str, Channel] = {}
        self.sample_buf: list[SampleRow] = []
        self.boot = 0
        # built by build_pipeline, after the first connection attempt
        self.stamper: ReadingStamper
        self.monitors: Monitors
        self.plausibility: Plausibility
        self.lparams: LimiterParams
        self.lstate: LimiterState
        self.remote: RemoteHandler
        self.pipeline_ready = asyncio.Event()
        self.meters: MeterWatch  # meter identity: replacement, stored values
        self.meter: Channel | None = None  # the heat meter the limiter follows (the first)
        self.actuator: Device | None = None
        self.actuator_ch: Channel | None = None
        self.meter_res: dict[str, float] = {}
        self.limiting = False
        self.release_pending = False
        self.notifier = Notifier()
        self.errlog = RateLimiter(60.0)
        self.stopping: asyncio.Event = Signal()  # cheap timed waits (agent.waits)
        self.topic = f"{cfg.mqtt.topic_prefix}/{cfg.site.id}"
        self.config_conflict = config_conflict
        self.last_records: dict[str, dict[str, Any]] = {}
        self.live_now: asyncio.Event = Signal()  # a period closed: write the snapshot now
        self.storage = StorageGuard(
            self.call,
            lambda: open_store(cfg.storage),
            cfg.storage.path,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        self.storage.first = taken[0] if taken else None
        self.outbox = GuardedOutbox(self.storage)

    # --- helpers ------------------------------------------------------------------

    async def pause(self, seconds: float) -> bool:
        """Sleep, or less when stopping; False once stopping. The loops check it rather than
        rely on cancellation alone: Python 3.11's wait_for can swallow a cancel that meets
        an inner completion (seen with aiomqtt's publish), and a loop would then go on.
        No task per pause (``agent.waits``): the timers wake every second."""
        if self.stopping.is_set():
            return False
        return not await wait_event(self.stopping, seconds)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db, functools.partial(fn, *args))

    def sign_body(self, stream: str) -> Callable[[dict[str, Any], int, str | None], str]:
        def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
            return self.signer.sign(
                envelope(self.cfg.site.id, stream, seq, prev, self.clock.wall(), body)
            )

        return sign

    async def emit_event(self, ev: dict[str, Any]) -> None:
        """Store (signed, chained) and queue one event; kept in memory while the store is
        out (degraded mode), stored in order once it works again."""
        body = event_body(ev, self.clock.wall())
        log.info("event %s %s", body.get("kind"), body.get("device", ""))
        self.storage.queue_event(body)
        await self.flush_events()

    # --- startup --------------------------------------------------------------------

    async def open(self) -> None:
        cfg = self.cfg
        self.storage.on_open = self.on_store_open
        await self.storage.open()  # a failure: degraded mode, retried by storage_loop
        self.uplink = Uplink(
            MqttSettings(
                url=cfg.mqtt.url,
                topic_prefix=cfg.mqtt.topic_prefix,
                site=cfg.site.id,
                client_id=cfg.mqtt.client_id,
                username=cfg.mqtt.username,
                password=cfg.mqtt.password_file.read_text().strip()
                if cfg.mqtt.password_file
                else None,
                ca_file=str(cfg.mqtt.ca_file) if cfg.mqtt.ca_file else None,
                cert_file=str(cfg.mqtt.cert_file) if cfg.mqtt.cert_file else None,
                key_file=str(cfg.mqtt.key_file) if cfg.mqtt.key_file else None,
                keepalive_s=cfg.mqtt.keepalive_s,
            ),
            self.signer,
            self.outbox,
            self.db,
            boot=self.boot,
            on_message=self.on_message,
            subscriptions=[f"{self.topic}/config/set", f"{self.topic}/cmd"],
            on_refused=self.on_refused,
            on_event=self.emit_event,
        )
        if self.config_conflict:  # a local edit made the remote overlay inapplicable
            await self.emit_event(
                {
                    "kind": "config_conflict",
                    "overlay_version": self.config_version,
                    "reason": self.config_conflict,
                }
            )

    async def build_pipeline(self) -> None:
        """The parts the first publish does not need (and their imports): after the
        uplink's first connection attempt."""
        from agent.commands import RemoteHandler
        from agent.limiter import LimiterState
        from agent.meters import MeterWatch
        from agent.monitors import Monitors
        from agent.plausibility import Plausibility
        from agent.stamping import ReadingStamper
        from drivers.device import DevicePool

        self.pool = DevicePool(self.clock)
        self.stamper = ReadingStamper()
        self.meters = MeterWatch()
        self.plausibility = Plausibility(self.cfg.plausibility)
        self.monitors = Monitors(monitor_params(self.cfg))
        self.lparams = limiter_params(self.cfg)
        self.lstate = LimiterState.initial()
        self.remote = RemoteHandler(self, self.config_version)
        self.remote.conflict = self.config_conflict
        if self.storage.store is not None:  # else on_store_open does it once the store opens
            with contextlib.suppress(Exception):
                await self.remote.load_seen()
        self.pipeline_ready.set()

    async def open_devices(self) -> None:
        """The devices and their record channels: after the uplink's first connect, so
        start-up imports (the Modbus stack) do not delay the first publish."""
        from agent import aggregator as agg
        from agent import limiter_store
        from agent.devices import driver_spec
        from agent.limiter import LimiterState
        from drivers.device import Device
        from drivers.health import OFFLINE_AFTER

        cfg = self.cfg
        for d in cfg.devices:
            spec = driver_spec(d)
            dev = self.pool.add(spec)
            rollover = dev.rollover
            params = record_params(cfg, d.name, d.role, rollover, d.poll_s)
            ch = Channel(dev, params, agg.AggState.initial(), poll_s=d.poll_s)
            # health: a slow meter is not offline after one missed poll
            dev.offline_after_s = max(dev.offline_after_s, OFFLINE_AFTER * d.poll_s)
            self.channels[d.name] = ch
            await self.load_channel(ch)
            if d.role == ACTUATOR and d.name == cfg.limiter.actuator and isinstance(dev, Device):
                self.actuator, self.actuator_ch = dev, ch
            if d.role == HEAT_METER and self.meter is None:
                self.meter = ch
                if isinstance(dev, Device):  # M-Bus: the limiter's default resolutions
                    regs = dev.spec.profile.registers
                    self.meter_res = {r.name: r.scale for r in regs if r.counter}
        self.lparams = self.limiter_params(cfg)
        _, saved = await self.storage.run("limiter state", limiter_store.load)
        self.lstate = saved or LimiterState.initial()
        if saved is not None:
            log.info("limiter state restored: %s", limiter_store.describe(saved))
        # started: the collector `dh-agent run` starts without (agent.cli.main) is back, and
        # what it frees with the start-up heap goes back to the OS
        gc.enable()
        gc.collect()
        release_free_memory()
        log.info(
            "dh-agent started: site %s, boot %d, %d devices, period %d s",
            cfg.site.id,
            self.boot,
            len(cfg.devices),
            cfg.site.period_s,
        )

    async def on_message(self, topic: str, payload: bytes) -> None:
        await self.pipeline_ready.wait()  # a retained config/set may come with the first SUBACK
        try:
            await self.remote.handle(topic, payload)
        except Exception:  # garbage on a subscribed topic never stops the agent
            log.exception("remote message on %s not handled", topic)

    def apply_config(self, cfg: Config) -> None:
        """Put a validated config in effect without a restart (remote config/set):
        limiter, monitors, records and poll rates follow from the next poll on."""
        from drivers.health import OFFLINE_AFTER, OFFLINE_AFTER_S

        was_enforcing = self.lparams.enforce and self.limiting
        self.cfg = cfg
        self.lparams = self.limiter_params(cfg)
        self.monitors.params = monitor_params(cfg)
        self.plausibility.params = cfg.plausibility
        if was_enforcing and not self.lparams.enforce:
            # enforcement switched off while limiting: release now, not at the watchdog
            self.limiting = False
            self.release_pending = True
        for d in cfg.devices:
            ch = self.channels.get(d.name)
            if ch is None:
                continue
            ch.poll_s = d.poll_s
            ch.params = record_params(cfg, d.name, d.role, ch.params.rollover, d.poll_s)
            ch.device.offline_after_s = max(OFFLINE_AFTER_S, OFFLINE_AFTER * d.poll_s)
        log.info("config applied: version %d", self.remote.version)

    def set_signer(self, signer: Signer) -> None:
        self.signer = signer
        if self.uplink is not None:
            self.uplink.signer = signer

    # --- lifecycle ------------------------------------------------------------------

    async def first_connect(self, limit: float) -> None:
        """Until the uplink's first connection attempt has ended (connected or failed),
        at most ``limit`` seconds."""
        up, end = self.uplink, self.clock.mono() + limit
        while up is not None and not (up.connected or up.last_error) and await self.pause(0.01):
            if self.clock.mono() >= end:
                return

    async def run(self) -> None:
        await self.open()
        assert self.uplink is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.uplink.run(), name="uplink")]
                await self.first_connect(3.0)
                await self.build_pipeline()
                await self.open_devices()
                tasks += [
                    tg.create_task(self.flush_loop(), name="flush"),
                    tg.create_task(self.maintenance_loop(), name="maintenance"),
                    tg.create_task(self.telemetry_loop(), name="telemetry"),
                    tg.create_task(self.live_loop(), name="live"),
                    tg.create_task(self.watchdog_loop(), name="watchdog"),
                    tg.create_task(self.announce_loop(), name="announce"),
                    tg.create_task(self.storage_loop(), name="storage"),
                    tg.create_task(self.remote.rotation().resume(), name="rotation"),
                ]
                for ch in self.channels.values():
                    tasks.append(
                        tg.create_task(self.poll_loop(ch), name=f"poll:{ch.params.device}")
                    )
                tg.create_task(self.arm_actuator(), name="arm-actuator")
                self.notifier.ready()
                await self.stopping.wait()
                log.info("stopping")
                self.notifier.stopping()
                for t in tasks:
                    t.cancel()
                # cancel again what is still running after a while: a cancel swallowed
                # inside a library (3.11 wait_for) must not keep the agent from exiting
                for _ in range(10):
                    left = [t for t in tasks if not t.done()]
                    if not left:
                        break
                    await asyncio.wait(left, timeout=3.0)
                    for t in left:
                        if not t.done():
                            log.warning("task %s still running: cancelling again", t.get_name())
                            t.cancel()
        finally:
            await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush_samples()
            if self.pipeline_ready.is_set():
                await self.save_limiter()
        with contextlib.suppress(OSError):  # stopped: readers see "agent not running"
            self.cfg.live.path.unlink()
        if self.uplink is not None:
            try:
                await asyncio.wait_for(self.uplink.shutdown(), 10)
            except Exception as e:
                log.warning("uplink shutdown: %s", e)
        try:  # the devices' connections: bounded, so a stuck bus cannot hold the exit
            if self.pipeline_ready.is_set():
                await asyncio.wait_for(self.pool.close(), 5)
        except Exception as e:
            log.warning("closing the devices: %s", e)
        if self.storage.store is not None:
            try:
                await self.call(self.storage.store.close)
            except Exception as e:  # a full disk at the very end: nothing signed is lost
                log.warning("closing the store: %s", e)
        self.db.shutdown(wait=True)


def run_agent(cfg: Config, early: EarlyStore | None = None) -> int:
    t0 = time.monotonic()
    cfg, version, problem = apply_overlay(cfg)
    if problem:
        log.error("remote config overlay ignored (local file in effect): %s", problem)
    agent = Agent(cfg, config_version=version, config_conflict=problem, early=early)
    asyncio.run(agent.run())
    log.info("stopped after %.0f s", time.monotonic() - t0)
    return 0
