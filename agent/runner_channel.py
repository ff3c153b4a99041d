"""A device's record channel in the agent's pipeline (``agent.runner``): its state
(``Channel``), the parameters of its records (``record_params``) and the sample a stamped
reading becomes for the aggregator (``to_sample``)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.protocol import HEAT_METER
from agent.waits import Signal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent import aggregator as agg
    from agent.config import Config
    from drivers.device import AnyDevice
    from drivers.types import Reading


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
    poll_now: asyncio.Event = field(default_factory=Signal)  # cheap timed wait
    loaded: bool = False  # aggregator state and samples read from the store


def record_params(
    cfg: Config, name: str, role: str, rollover: Mapping[str, float], poll_s: float = 1.0
) -> agg.RecordParams:
    from agent import aggregator as agg  # with the pipeline, after the first connect

    heat = role == HEAT_METER
    return agg.RecordParams(
        gap_s=max(10.0, 1.5 * poll_s),  # a slow meter (M-Bus, 10-60 s): a poll apart is no gap
        device=name,
        role=role,
        period_s=cfg.site.period_s,
        flow_limit_m3h=cfg.contract.flow_limit_m3h if heat else None,
        power_limit_kw=cfg.contract.power_limit_kw if heat else None,
        rollover=rollover,
    )


def to_sample(r: Reading, ts: float, extra: frozenset[str]) -> agg.Sample:
    from agent import aggregator as agg

    vals = {k: v.value for k, v in r.values.items() if v.good and math.isfinite(v.value)}
    flags = set(extra)
    status = r.values.get("status")
    if status is not None and (not status.good or status.value != 0):
        flags.add("meter_error")
    if any(not v.good for v in r.values.values()):
        flags.add("meter_error")
    return agg.Sample(ts=ts, values=vals, flags=frozenset(flags), meter_id=r.meter_id)
