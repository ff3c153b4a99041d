"""agent.limiter_state.evolve: dataclasses.replace for the limiter's dataclasses, faster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.limiter import Action
from agent.limiter_state import LimiterParams, LimiterState, Override, Track, evolve


def test_evolve_is_replace() -> None:
    s = LimiterState(last_t=5.0, vol=Track(period=0.0, used=1.5), override=Override(until=9.0))
    for changes in ({}, {"last_t": 6.0}, {"vol": Track(), "limiting": True, "since": 3.0}):
        new = evolve(s, **changes)
        assert new == dataclasses.replace(s, **changes)
        assert type(new) is LimiterState and new is not s
    assert s.last_t == 5.0 and s.vol.used == 1.5  # the original is untouched
    p = LimiterParams(flow_limit_m3h=2.5, power_limit_kw=None, period_s=3600, enforce=True,
                      refresh_s=20.0)  # fmt: skip
    assert evolve(p, power_limit_kw=40.0) == dataclasses.replace(p, power_limit_kw=40.0)
    a = Action(write_pct=None, events=[], limiting=False)
    assert evolve(a, events=[{"kind": "x"}]).events == [{"kind": "x"}]
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(s, last_t=1.0).last_t = 2.0  # type: ignore[misc]


def test_evolve_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        evolve(LimiterState(), no_such_field=1)
    unknown: dict[str, Any] = {"no_such_field": 1}
    with pytest.raises(TypeError):  # as replace does
        dataclasses.replace(LimiterState(), **unknown)


def test_evolve_of_a_slots_dataclass_goes_through_replace() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class P:
        x: int
        y: int = 0

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x")

    assert evolve(P(1), y=2) == P(1, 2)
    with pytest.raises(ValueError):
        evolve(P(1), x=-1)
