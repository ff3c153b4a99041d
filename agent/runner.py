"""`dh-agent run`: the whole pipeline under one asyncio TaskGroup.

    drivers -> poller -> (stamp) -> aggregator -> store -> uplink
                      \\-> limiter -> actuator
                      \\-> monitors -> events -> store -> uplink

The decisions live in pure modules (aggregator, limiter, monitors, config); this module
only moves readings between them and does the I/O. The store is synchronous and
confined to one writer thread (``self.db``); nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent import advice, limiter_store, snapshot
from agent import aggregator as agg
from agent.clock import SyncClock
from agent.commands import RemoteHandler
from agent.config import Config
from agent.degraded import GuardedOutbox, StorageGuard, bound_pending, is_storage_error
from agent.events import event_body
from agent.jws import Signer, envelope
from agent.keys import load_private
from agent.limiter import LimiterParams, LimiterState, MeterInput
from agent.limiter import step as limiter_step
from agent.logs import RateLimiter
from agent.meters import MeterWatch, disk_flags
from agent.monitors import MonitorParams, Monitors
from agent.notify import Notifier
from agent.plausibility import Plausibility
from agent.poll import driver_spec
from agent.remote import apply_overlay
from agent.runner_storage import StorageMixin
from agent.stamping import ReadingStamper
from agent.store import SampleRow, Store
from agent.uplink import MqttSettings, Uplink
from drivers.device import OFFLINE_AFTER, OFFLINE_AFTER_S, AnyDevice, Device, DevicePool
from drivers.types import Clock, Reading

log = logging.getLogger("dh.agent")
T = TypeVar("T")


@dataclass
class Channel:
    """Per-device pipeline state."""

    device: AnyDevice
    params: agg.RecordParams
    state: agg.AggState
    pending: list[agg.Sample] = field(default_factory=list)
    last: Reading | None = None
    poll_s: float = 1.0
    stored_ts: float = -math.inf  # time of the last reading kept for the disk
    poll_now: asyncio.Event = field(default_factory=asyncio.Event)
    loaded: bool = False  # aggregator state and samples read from the store


def _profile_name(device: Any) -> str:
    """A device's profile name (Modbus: a loaded register map; M-Bus: its name)."""
    prof = device.spec.profile
    return prof if isinstance(prof, str) else str(prof.name)


def release_free_memory() -> None:
    """Hand the heap freed by imports and start-up back to the OS (glibc malloc_trim):
    a daemon on a small box should not keep its start-up peak for years."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def record_params(
    cfg: Config, name: str, role: str, rollover: Mapping[str, float], poll_s: float = 1.0
) -> agg.RecordParams:
    heat = role == "heat_meter"
    return agg.RecordParams(
        gap_s=max(10.0, 1.5 * poll_s),  # a slow meter (M-Bus, 10-60 s): a poll apart is no gap
        device=name,
        role=role,
        period_s=cfg.site.period_s,
        flow_limit_m3h=cfg.contract.flow_limit_m3h if heat else None,
        power_limit_kw=cfg.contract.power_limit_kw if heat else None,
        rollover=rollover,
    )


def limiter_params(
    cfg: Config,
    meter: str | None = None,
    rollover: dict[str, float] | None = None,
    resolution: dict[str, float] | None = None,
) -> LimiterParams:
    ro, res = rollover or {}, resolution or {}
    return LimiterParams(
        flow_limit_m3h=cfg.contract.flow_limit_m3h,
        power_limit_kw=cfg.contract.power_limit_kw,
        period_s=cfg.site.period_s,
        enforce=cfg.contract.enforce,
        refresh_s=max(2.0, cfg.limiter.watchdog_s / 3),
        volume_rollover_m3=ro.get("volume_m3"),
        energy_rollover_kwh=ro.get("energy_kwh"),
        volume_resolution_m3=res.get("volume_m3", 0.001),
        energy_resolution_kwh=res.get("energy_kwh", 0.1),
        device=meter,
        stroke_s=cfg.limiter.stroke_s,
        characteristic=cfg.limiter.valve_characteristic,
        return_max_c=cfg.limiter.return_max_c,
    )


def monitor_params(cfg: Config) -> MonitorParams:
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


def to_sample(r: Reading, ts: float, extra: frozenset[str]) -> agg.Sample:
    vals = {k: v.value for k, v in r.values.items() if v.good and math.isfinite(v.value)}
    flags = set(extra)
    status = r.values.get("status")
    if status is not None and (not status.good or status.value != 0):
        flags.add("meter_error")
    if any(not v.good for v in r.values.values()):
        flags.add("meter_error")
    return agg.Sample(ts=ts, values=vals, flags=frozenset(flags), meter_id=r.meter_id)


class Agent(StorageMixin):
    def __init__(
        self,
        cfg: Config,
        clock: Clock | None = None,
        config_version: int = 0,
        config_conflict: str = "",
    ) -> None:
        self.cfg = cfg
        self.config_version = config_version
        self.clock: Clock = clock if clock is not None else SyncClock()
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.store: Store | None = None
        self.uplink: Uplink | None = None
        rotated = cfg.storage.path.parent / "agent-rotated.key"
        self.signer = Signer(load_private(rotated if rotated.exists() else cfg.keys.agent_key))
        self.pool = DevicePool(self.clock)
        self.channels: dict[str, Channel] = {}
        self.sample_buf: list[SampleRow] = []
        self.boot = 0
        self.stamper = ReadingStamper()
        self.monitors = Monitors(monitor_params(cfg))
        self.meters = MeterWatch()  # meter identity: replacement, stored values
        self.plausibility = Plausibility(cfg.plausibility)
        self.lparams = limiter_params(cfg)
        self.lstate = LimiterState.initial()
        self.meter: Channel | None = None  # the heat meter the limiter follows (the first)
        self.actuator: Device | None = None
        self.actuator_ch: Channel | None = None
        self.meter_res: dict[str, float] = {}
        self.limiting = False
        self.release_pending = False
        self.notifier = Notifier()
        self.errlog = RateLimiter(60.0)
        self.stopping = asyncio.Event()
        self.topic = f"{cfg.mqtt.topic_prefix}/{cfg.site.id}"
        self.remote = RemoteHandler(self, config_version)
        self.last_records: dict[str, dict[str, Any]] = {}
        self.live_now = asyncio.Event()  # a period closed: write the snapshot now
        self.remote.conflict = config_conflict
        self.storage = StorageGuard(
            self.call,
            lambda: Store(
                cfg.storage.path,
                max_mb=cfg.storage.max_mb,
                sample_retention_days=cfg.storage.sample_retention_days,
            ),
            cfg.storage.path,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        self.outbox = GuardedOutbox(self.storage)

    # --- helpers ------------------------------------------------------------------

    async def pause(self, seconds: float) -> bool:
        """Sleep, or less when stopping; False once stopping. The loops check it rather than
        rely on cancellation alone: Python 3.11's wait_for can swallow a cancel that meets
        an inner completion (seen with aiomqtt's publish), and a loop would then go on."""
        if self.stopping.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.0, seconds))
        return not self.stopping.is_set()

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
        if self.remote.conflict:  # a local edit made the remote overlay inapplicable
            await self.emit_event(
                {
                    "kind": "config_conflict",
                    "overlay_version": self.remote.version,
                    "reason": self.remote.conflict,
                }
            )

    async def open_devices(self) -> None:
        """The devices and their record channels: after the uplink's first connect, so
        start-up imports (the Modbus stack) do not delay the first publish."""
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
            if d.role == "actuator" and d.name == cfg.limiter.actuator and isinstance(dev, Device):
                self.actuator, self.actuator_ch = dev, ch
            if d.role == "heat_meter" and self.meter is None:
                self.meter = ch
                if isinstance(dev, Device):  # M-Bus: the limiter's default resolutions
                    regs = dev.spec.profile.registers
                    self.meter_res = {r.name: r.scale for r in regs if r.counter}
        self.lparams = self.limiter_params(cfg)
        _, saved = await self.storage.run("limiter state", limiter_store.load)
        self.lstate = saved or LimiterState.initial()
        if saved is not None:
            log.info("limiter state restored: %s", limiter_store.describe(saved))
        release_free_memory()
        log.info(
            "dh-agent started: site %s, boot %d, %d devices, period %d s",
            cfg.site.id,
            self.boot,
            len(cfg.devices),
            cfg.site.period_s,
        )

    async def on_message(self, topic: str, payload: bytes) -> None:
        try:
            await self.remote.handle(topic, payload)
        except Exception:  # garbage on a subscribed topic never stops the agent
            log.exception("remote message on %s not handled", topic)

    def apply_config(self, cfg: Config) -> None:
        """Put a validated config in effect without a restart (remote config/set):
        limiter, monitors, records and poll rates follow from the next poll on."""
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

    def limiter_params(self, cfg: Config) -> LimiterParams:
        m = self.meter
        return limiter_params(
            cfg,
            m.params.device if m else None,
            dict(m.params.rollover) if m else None,
            self.meter_res,
        )

    def set_signer(self, signer: Signer) -> None:
        self.signer = signer
        if self.uplink is not None:
            self.uplink.signer = signer

    async def announce_loop(self) -> None:
        """Publish the retained config/current on every (re)connection."""
        assert self.uplink is not None
        was = False
        while await self.pause(1.0):  # a reconnection is noticed within a second
            now = self.uplink.connected
            if now and not was:
                await self.remote.publish_current()
            was = now

    # --- the pipeline ---------------------------------------------------------------

    async def poll_loop(self, ch: Channel) -> None:
        mono = self.clock.mono
        next_t = mono()
        while not self.stopping.is_set():
            try:
                r = await ch.device.read()
                await self.on_reading(ch, r)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one device's failure never stops the others
                ok, n = self.errlog.allow(f"poll:{ch.params.device}", mono())
                if ok:
                    log.exception(
                        "device %s: poll failed (%s; %d suppressed)", ch.params.device, e, n
                    )
            next_t += ch.poll_s
            delay = next_t - mono()
            if delay < -ch.poll_s:  # fell behind (slow bus): do not burst to catch up
                next_t = mono()
                delay = 0.0
            ch.poll_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.poll_now.wait(), max(0.0, delay))

    async def on_reading(self, ch: Channel, r: Reading) -> None:
        ch.last = r
        name, role = ch.params.device, ch.params.role
        # monitors and limiter act on the live reading, on the monotonic clock's "now"
        values = {k: (v.value if v.good else None) for k, v in r.values.items()}
        for ev in self.monitors.observe(name, role, r.ts, values, r.ok):
            await self.emit_event(ev)
        for ev in self.meters.observe(name, r, getattr(ch.device, "stored", None)):
            await self.emit_event(ev)

        if role == "heat_meter" and r.ok:  # plausibility sees raw values (faults are evidence)
            raw = {k: v.value for k, v in r.values.items()}
            bad = [k for k, v in r.values.items() if not v.good]
            for ev in self.plausibility.observe(name, r.ts, raw, bad, ch.params.rollover):
                await self.emit_event(ev)
        if ch is self.meter and (
            self.lparams.flow_limit_m3h is not None
            or self.lparams.power_limit_kw is not None
            or self.lparams.return_max_c is not None
            or self.lstate.override is not None
        ):
            await self.run_limiter(r)
        if self.release_pending and self.actuator is not None:
            self.release_pending = False
            await self.write_limit(self.lparams.default_pct)
        # timestamps: readings before clock sync are held and restamped later
        steps, accepted = self.stamper.steps, self.stamper.accepted
        stamped = self.stamper.push(r)
        if self.stamper.steps != steps or self.stamper.accepted != accepted:
            # readings across a step are placed by the monotonic clock and flagged until
            # the step is accepted (small and lasting) or the wall clock agrees again
            action = "accepted" if self.stamper.accepted != accepted else "held"
            step = round(self.stamper.last_step_s, 3)
            log.warning("clock step of %+.3f s (%s)", step, action)
            t = stamped[-1][1] if stamped else None  # on the record time line
            await self.emit_event({"kind": "clock_step", "step_s": step, "action": action, "t": t})
        for rr, ts, flags in stamped:
            if self.limiting and role == "heat_meter":
                flags = flags | {"limited"}
            s = to_sample(rr, ts, flags | self.meters.sample_flags(name, rr.meter_id))
            ch.pending.append(s)
            # to disk (for a restart mid-period and `status`): one reading per
            # sample_every_s, and every flagged one; all of them feed the records in memory
            if ts - ch.stored_ts < self.cfg.storage.sample_every_s and not s.flags - {"limited"}:
                continue
            ch.stored_ts = ts
            self.sample_buf.append(
                SampleRow(
                    device=name,
                    ts=ts,
                    mono=rr.mono,
                    boot=self.boot,
                    synced=rr.synced,
                    ok=rr.ok,
                    values=dict(s.values),
                    flags=disk_flags(s),
                )
            )
        await self.close_periods(ch)

    async def close_periods(self, ch: Channel) -> None:
        if not ch.loaded and not await self.load_channel(ch):
            bound_pending(ch.pending, ch.params.period_s)
            return
        st = ch.state
        if not ch.pending:
            return
        newest = max(s.ts for s in ch.pending)
        p = ch.params.period_s
        if st.boundary is not None and newest < st.boundary + p:
            return
        if st.boundary is None and math.floor(newest / p) == math.floor(ch.pending[0].ts / p):
            return
        records, new_state = agg.close_periods(st, ch.pending, ch.params)
        if not records:
            ch.state = new_state
            return
        # the samples behind these records go first, so a crash cannot lose them
        await self.flush_samples()
        name, state_json = ch.params.device, new_state.to_json()
        topic, sign = f"{self.topic}/interval", self.sign_body("interval")
        ok, _ = await self.storage.run(
            "records", lambda st: st.commit_intervals(name, state_json, records, topic, sign)
        )
        if not ok:  # degraded: the readings stay pending (bounded) until the store works
            bound_pending(ch.pending, ch.params.period_s)
            return
        ch.state = new_state
        b = new_state.boundary
        ch.pending = [s for s in ch.pending if b is None or s.ts > b]
        self.last_records[ch.params.device] = records[-1]
        self.live_now.set()
        for rec in records:
            for ev in self.monitors.on_record(rec):
                await self.emit_event(ev)
        if ch is self.meter:
            await self.save_limiter()
            try:
                await self.monthly_review(records[-1])
            except Exception as e:
                if not is_storage_error(e):
                    raise
                self.storage.failed("contract review", e)
        if self.uplink is not None:
            self.uplink.wake()

    async def monthly_review(self, last: dict[str, Any]) -> None:
        """Once a month (the first record of a new month): the largest hourly flow and
        power of the last 12 months against the contract, as a `contract_review` event."""
        assert self.store is not None and self.meter is not None
        end = advice.record_end(last)
        month = advice.month_key(end)
        done = await self.call(self.store.get_meta, "contract_review_month")
        if done == month:
            return
        if done is None:  # a fresh install: the first review comes next month
            await self.call(self.store.set_meta, "contract_review_month", month)
            return
        name, c = self.meter.params.device, self.cfg.contract
        recs = await self.call(
            lambda: list(self.store.iter_intervals(end - advice.YEAR_S, end, name))  # type: ignore[union-attr]
        )
        review = advice.contract_review(recs, end, c.flow_limit_m3h, c.power_limit_kw)
        await self.emit_event({**review, "device": name, "t": end})
        await self.call(self.store.set_meta, "contract_review_month", month)

    async def run_limiter(self, r: Reading) -> None:
        m = MeterInput(
            t=r.ts,
            volume_m3=r.good("volume_m3"),
            energy_kwh=r.good("energy_kwh"),
            flow_m3h=r.good("flow_m3h"),
            power_kw=r.good("power_kw"),
            valid=r.ok and r.good("volume_m3") is not None,
            position_pct=self.position(),
            return_c=r.good("return_c"),
        )
        had = self.lstate.override
        self.lstate, action = limiter_step(self.lparams, self.lstate, m)
        self.limiting = action.limiting
        for ev in action.events:
            await self.emit_event(ev)
        if had is not None and self.lstate.override is None:
            await self.save_limiter()  # an override ended: durable at once
            await self.remote.publish_current()
        if action.write_pct is not None and self.actuator is not None and self.lparams.enforce:
            await self.write_limit(action.write_pct)

    def position(self) -> float | None:
        """The actuator's reported position, when its last reading is fresh."""
        ch = self.actuator_ch
        r = ch.last if ch is not None else None
        if r is None or self.clock.mono() - r.mono > max(5.0, 3 * ch.poll_s):  # type: ignore[union-attr]
            return None
        return r.good("position_pct")

    async def save_limiter(self) -> None:
        """The limiter's state to the store (a small meta row): at a period close of its
        meter, with every sample flush, and when an override starts or ends."""
        await self.storage.run("limiter state", limiter_store.save, self.lstate)

    async def write_limit(self, pct: float) -> None:
        assert self.actuator is not None
        try:
            await self.actuator.write("limit_pct", pct)
        except Exception as e:
            ok, n = self.errlog.allow("actuator-write", self.clock.mono())
            if ok:
                log.warning("actuator write failed: %s (%d suppressed)", e, n)

    async def arm_actuator(self) -> None:
        """Set the actuator's own watchdog to ``limiter.watchdog_s``: the limit it holds is
        released that long after the agent last wrote it (the agent refreshes it well
        within), so heat delivery never depends on the agent being alive."""
        if self.actuator is None or not self.lparams.enforce:
            return
        for attempt in range(10):
            try:
                await self.actuator.write("watchdog_s", float(self.cfg.limiter.watchdog_s))
                return
            except Exception as e:
                if attempt == 9:
                    log.warning("actuator watchdog not set: %s", e)
                if not await self.pause(2.0):
                    return

    async def flush_samples(self) -> None:
        g = self.storage
        rows = g.samples + self.sample_buf
        g.samples, self.sample_buf = [], []
        if not rows:
            return
        ok, _ = await g.run("samples", lambda st: st.add_samples(rows))
        if not ok:
            g.keep_samples(rows)

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
        cfg, c, up = self.cfg, self.cfg.contract, self.uplink
        conds = self.monitors._conds
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
            delivery={k: getattr(cfg.delivery, k) for k in cfg.delivery.__slots__},
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
            alarms=[(d, k, conds[(d, k)].start) for d, k in self.monitors.active()],
            uplink=None if up is None else {"connected": up.connected, "backlog": backlog,
                                            "last_publish": up.last_publish},
            last_records=self.last_records,
        )  # fmt: skip

    async def live_loop(self) -> None:
        """Write the live snapshot every ``live.every_s`` and after each closed period."""
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.live_now.wait(), self.cfg.live.every_s)

    async def telemetry_loop(self) -> None:
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
            await self.save_limiter()
        with contextlib.suppress(OSError):  # stopped: readers see "agent not running"
            self.cfg.live.path.unlink()
        if self.uplink is not None:
            try:
                await asyncio.wait_for(self.uplink.shutdown(), 10)
            except Exception as e:
                log.warning("uplink shutdown: %s", e)
        try:  # the devices' connections: bounded, so a stuck bus cannot hold the exit
            await asyncio.wait_for(self.pool.close(), 5)
        except Exception as e:
            log.warning("closing the devices: %s", e)
        if self.storage.store is not None:
            try:
                await self.call(self.storage.store.close)
            except Exception as e:  # a full disk at the very end: nothing signed is lost
                log.warning("closing the store: %s", e)
        self.db.shutdown(wait=True)


def run_agent(cfg: Config) -> int:
    t0 = time.monotonic()
    cfg, version, problem = apply_overlay(cfg)
    if problem:
        log.error("remote config overlay ignored (local file in effect): %s", problem)
    agent = Agent(cfg, config_version=version, config_conflict=problem)
    asyncio.run(agent.run())
    log.info("stopped after %.0f s", time.monotonic() - t0)
    return 0
