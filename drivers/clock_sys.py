"""The system clocks as a ``drivers.types.Clock`` (no sync detection).

``synced()`` is always True here; the agent injects a clock with real NTP-sync
detection (agent/clock.py) where it matters.
"""

from __future__ import annotations

import time


class SystemClock:
    """wall = time.time, mono = time.monotonic, synced = True."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()

    def synced(self) -> bool:
        return True
