"""A device's record channel in the agent's pipeline (``agent.runner``): its state
(``Channel``), the parameters of its records (``record_params``) and the sample a stamped
reading becomes for the aggregator (``to_sample``)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import field
from typing import TYPE_CHECKING

from agent.protocol import HEAT_METER
from agent.waits import Signal
from drivers.dataclass_lite import mutable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent import aggregator as agg
    from agent.config import Config
    from drivers.device import AnyDevice
    from drivers.types import Reading


@mutable
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
    # newest_ts's memo: (the pending list, how many of its samples were looked at, the
    # last of them, the newest ts among them)
    newest: tuple[list[agg.Sample], int, agg.Sample | None, float] | None = None

    def newest_ts(self) -> float:
        """The newest ``ts`` in ``pending`` (not empty). Between two closes of a period the
        list only grows (``append``), so only the samples added since the last call are
        looked at, not the whole period's (3,600 at 1 s polls and hourly records). A new
        list, or one whose first samples are no longer those looked at (shorter, or
        another sample where the last one looked at was), is scanned whole; whoever thins
        the list in place sets ``newest`` to None as well."""
        p, memo = self.pending, self.newest
        n = len(p)
        if (
            memo is None
            or memo[0] is not p
            or memo[1] > n
            or (memo[1] and p[memo[1] - 1] is not memo[2])
        ):
            memo = (p, 0, None, -math.inf)
        top = memo[3]
        for i in range(memo[1], n):
            ts = p[i].ts
            if ts > top:
                top = ts
        self.newest = (p, n, p[n - 1] if n else None, top)
        return top


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
