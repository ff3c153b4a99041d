"""Small helpers for tests that drive asyncio code or wait for another process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run one coroutine to completion in a fresh event loop (bounded by ``timeout``)."""
    if timeout is None:
        return asyncio.run(coro)
    return asyncio.run(asyncio.wait_for(coro, timeout))


def run_fn(coro_fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
    """Like ``run`` for a coroutine function called inside the new loop."""

    async def main() -> T:
        return await coro_fn()

    return run(main(), timeout)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def await_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_until`` inside an event loop."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
