"""The reading pipeline of ``Agent`` (``agent.runner``): a device's poll loop, each
reading through the monitors, the limiter and the stamper into the device's channel, the
periods it closes into records (stored, signed, reviewed monthly against the contract) and
the raw samples kept for the disk."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any, TypeVar

from agent.degraded import StorageGuard, bound_pending, is_storage_error
from agent.protocol import HEAT_METER
from agent.runner_channel import Channel, to_sample
from agent.store import SampleRow, Store
from agent.waits import wait_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import Config
    from agent.limiter import LimiterParams, LimiterState
    from agent.logs import RateLimiter
    from agent.meters import MeterWatch
    from agent.monitors import Monitors
    from agent.plausibility import Plausibility
    from agent.stamping import ReadingStamper
    from agent.uplink import Uplink
    from drivers.device import Device
    from drivers.types import Clock, Reading

log = logging.getLogger("dh.agent")
T = TypeVar("T")


class PipelineMixin:
    cfg: Config
    clock: Clock
    storage: StorageGuard
    store: Store | None
    uplink: Uplink | None
    boot: int
    topic: str
    stopping: asyncio.Event
    errlog: RateLimiter
    monitors: Monitors
    meters: MeterWatch
    plausibility: Plausibility
    stamper: ReadingStamper
    sample_buf: list[SampleRow]
    last_records: dict[str, dict[str, Any]]
    live_now: asyncio.Event
    lparams: LimiterParams
    lstate: LimiterState
    meter: Channel | None
    actuator: Device | None
    limiting: bool
    release_pending: bool
    channels: dict[str, Channel]

    if TYPE_CHECKING:

        async def call(self, fn: Callable[..., T], *args: Any) -> T: ...
        def sign_body(self, stream: str) -> Callable[[dict[str, Any], int, str | None], str]: ...
        async def emit_event(self, ev: dict[str, Any]) -> None: ...
        async def load_channel(self, ch: Channel) -> bool: ...
        async def run_limiter(self, r: Reading) -> None: ...
        async def write_limit(self, pct: float) -> None: ...
        async def save_limiter(self) -> None: ...

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
            await wait_event(ch.poll_now, delay)  # no task per poll (agent.waits)

    def poll_all_now(self) -> None:
        """Every device polled at once (the ``poll_now`` command)."""
        for ch in self.channels.values():
            ch.poll_now.set()

    async def on_reading(self, ch: Channel, r: Reading) -> None:
        from agent import meters  # with the pipeline, after the first connect

        ch.last = r
        name, role = ch.params.device, ch.params.role
        # monitors and limiter act on the live reading, on the monotonic clock's "now"
        values = {k: (v.value if v.good else None) for k, v in r.values.items()}
        for ev in self.monitors.observe(name, role, r.ts, values, r.ok):
            await self.emit_event(ev)
        for ev in self.meters.observe(name, r, getattr(ch.device, "stored", None)):
            await self.emit_event(ev)

        if role == HEAT_METER and r.ok:  # plausibility sees raw values (faults are evidence)
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
            if self.limiting and role == HEAT_METER:
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
                    flags=meters.disk_flags(s),
                )
            )
        await self.close_periods(ch)

    async def close_periods(self, ch: Channel) -> None:
        if not ch.loaded and not await self.load_channel(ch):
            bound_pending(ch.pending, ch.params.period_s)
            ch.newest = None  # thinned in place
            return
        st = ch.state
        if not ch.pending:
            return
        newest = ch.newest_ts()  # max(s.ts for s in ch.pending), from what was added
        p = ch.params.period_s
        if st.boundary is not None and newest < st.boundary + p:
            return
        if st.boundary is None and math.floor(newest / p) == math.floor(ch.pending[0].ts / p):
            return
        from agent import aggregator as agg

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
            ch.newest = None  # thinned in place
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
        from agent import advice  # once a month: not at start-up

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

    async def flush_samples(self) -> None:
        g = self.storage
        rows = g.samples + self.sample_buf
        g.samples, self.sample_buf = [], []
        if not rows:
            return
        ok, _ = await g.run("samples", lambda st: st.add_samples(rows))
        if not ok:
            g.keep_samples(rows)
