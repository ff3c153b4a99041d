"""agent.waits: a timed wait on an event without a task per wait."""

from __future__ import annotations

import asyncio
import time

from agent.waits import Signal, wait_event


def test_signal_times_out_and_stays_clear() -> None:
    async def go() -> None:
        s = Signal()
        t0 = time.monotonic()
        assert await s.wait_s(0.05) is False
        assert time.monotonic() - t0 >= 0.04
        assert not s._waiters  # the waiter removed itself

    asyncio.run(go())


def test_signal_set_wakes_a_timed_waiter_at_once() -> None:
    async def go() -> None:
        s = Signal()
        asyncio.get_running_loop().call_later(0.01, s.set)
        t0 = time.monotonic()
        assert await s.wait_s(10.0) is True
        assert time.monotonic() - t0 < 1.0
        assert not s._waiters
        assert await s.wait_s(10.0) is True  # already set: at once
        # a plain waiter and a timed one are both woken by one set
        s.clear()
        plain = asyncio.ensure_future(s.wait())
        timed = asyncio.ensure_future(s.wait_s(10.0))
        await asyncio.sleep(0)
        s.set()
        assert list(await asyncio.wait_for(asyncio.gather(plain, timed), 1.0)) == [True, True]

    asyncio.run(go())


def test_signal_zero_wait_yields_to_others() -> None:
    async def go() -> None:
        s, ran = Signal(), list[int]()
        asyncio.get_running_loop().call_soon(ran.append, 1)
        assert await s.wait_s(0.0) is False
        assert ran == [1]
        assert await s.wait_s(-3.0) is False  # a negative time is no time

    asyncio.run(go())


def test_signal_cancelled_waiter_cleans_up() -> None:
    async def go() -> None:
        s = Signal()
        t = asyncio.ensure_future(s.wait_s(10.0))
        await asyncio.sleep(0.01)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the cancel was swallowed")
        assert not s._waiters
        s.set()  # nothing left to wake

    asyncio.run(go())


def test_wait_event_on_a_plain_event() -> None:
    async def go() -> None:
        e = asyncio.Event()
        assert await wait_event(e, 0.02) is False
        asyncio.get_running_loop().call_later(0.01, e.set)
        assert await wait_event(e, 10.0) is True
        assert await wait_event(Signal(), 0.01) is False

    asyncio.run(go())
