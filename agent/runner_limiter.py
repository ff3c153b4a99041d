"""The limiter side of ``Agent`` (``agent.runner``): its parameters from the config and
the meter, one control step per meter reading, the actuator's limit and watchdog writes,
and the limiter's state saved to the store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.commands import RemoteHandler
    from agent.config import Config
    from agent.degraded import StorageGuard
    from agent.limiter import LimiterParams, LimiterState, Override
    from agent.logs import RateLimiter
    from agent.runner_channel import Channel
    from drivers.device import Device
    from drivers.types import Clock, Reading

log = logging.getLogger("dh.agent")


def limiter_params(
    cfg: Config,
    meter: str | None = None,
    rollover: dict[str, float] | None = None,
    resolution: dict[str, float] | None = None,
) -> LimiterParams:
    from agent.limiter import LimiterParams  # with the pipeline, after the first connect

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


class LimiterMixin:
    cfg: Config
    clock: Clock
    storage: StorageGuard
    remote: RemoteHandler
    errlog: RateLimiter
    lparams: LimiterParams
    lstate: LimiterState
    meter: Channel | None
    meter_res: dict[str, float]
    actuator: Device | None
    actuator_ch: Channel | None
    limiting: bool

    if TYPE_CHECKING:

        async def pause(self, seconds: float) -> bool: ...
        async def emit_event(self, ev: dict[str, Any]) -> None: ...

    def limiter_params(self, cfg: Config) -> LimiterParams:
        m = self.meter
        return limiter_params(
            cfg,
            m.params.device if m else None,
            dict(m.params.rollover) if m else None,
            self.meter_res,
        )

    async def run_limiter(self, r: Reading) -> None:
        from agent.limiter import MeterInput
        from agent.limiter import step as limiter_step

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
        from agent import limiter_store

        await self.storage.run("limiter state", limiter_store.save, self.lstate)

    async def start_override(self, o: Override) -> None:
        """A timed lower limit (``limit_override``) in force, durable when this returns."""
        from agent import limiter_override

        self.lstate = limiter_override.start(self.lstate, o)
        await self.save_limiter()

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
