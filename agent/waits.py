"""Waiting for an event with a time limit, cheaply.

``asyncio.wait_for(event.wait(), t)`` wraps the wait in a new task every time and, when
the time is up, cancels that task and waits for it to finish: five or six turns of the
event loop, a task, a coroutine, three futures and a ``CancelledError`` thrown through
them per call. The agent's poll loops and timers wait like this every second (a device's
next poll, the stop signal), which was a fair part of its CPU in steady state
(docs/performance.md). ``asyncio.timeout`` saves the task but still ends each wait by
cancelling and unwinding; ``Signal.wait_s`` ends it with a plain timer that resolves the
waiter's future, as ``asyncio.sleep`` does.
"""

from __future__ import annotations

import asyncio


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Signal(asyncio.Event):
    """An ``asyncio.Event`` with a timed wait that needs no task and no cancellation.

    ``wait_s`` queues its future with the event's own waiters, which ``set`` resolves
    (CPython's ``asyncio.Event`` keeps them in ``_waiters``: a list of futures, each
    resolved with True by ``set``, removed by its waiter; ``tests/test_waits.py`` checks
    that this still holds)."""

    async def wait_s(self, seconds: float) -> bool:
        """Until the event is set or ``seconds`` (at least 0) have passed; whether it is
        set. Yields to the loop at least once unless the event is already set."""
        if self.is_set():
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(max(0.0, seconds), _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.remove(fut)
        return self.is_set()


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Until ``event`` is set or ``seconds`` (at least 0) have passed; whether it is set.
    A ``Signal`` waits with its timer; any other event under ``asyncio.timeout``."""
    if isinstance(event, Signal):
        return await event.wait_s(seconds)
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
