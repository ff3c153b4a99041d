"""Channel.newest_ts: the newest pending sample without scanning the whole period."""

from __future__ import annotations

import random
from typing import Any, cast

from agent import aggregator as agg
from agent.runner_channel import Channel


def _s(ts: float) -> agg.Sample:
    return agg.Sample(ts=ts, values={}, flags=frozenset(), meter_id=None)


def _ch() -> Channel:
    params = cast(Any, None)
    return Channel(cast(Any, object()), params, agg.AggState.initial())


def test_newest_follows_appends_new_lists_and_thinning() -> None:
    rnd = random.Random(7)
    ch = _ch()
    for _ in range(200):
        op = rnd.random()
        if op < 0.7 or not ch.pending:
            ch.pending.append(_s(rnd.uniform(0, 1000)))  # out of order too (clock steps)
        elif op < 0.8:
            ch.pending = [s for s in ch.pending if s.ts > rnd.uniform(0, 1000)]
        elif op < 0.9:
            del ch.pending[: rnd.randrange(len(ch.pending) + 1)]  # shorter: rescanned
        else:
            ch.pending[:] = ch.pending[::2]  # thinned in place, as bound_pending does
            ch.newest = None
        if ch.pending:
            assert ch.newest_ts() == max(s.ts for s in ch.pending)


def test_newest_looks_only_at_what_was_added() -> None:
    ch = _ch()
    ch.pending = [_s(float(i)) for i in range(3600)]
    assert ch.newest_ts() == 3599.0
    ch.pending.append(_s(10.0))
    assert ch.newest_ts() == 3599.0
    assert ch.newest is not None and ch.newest[1] == 3601
