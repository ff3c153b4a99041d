"""A device's health from its polls, the same rule for Modbus and M-Bus devices. Pure.

* OK after a successful poll;
* DEGRADED after 1 or more consecutive failed polls;
* OFFLINE after ``OFFLINE_AFTER`` (3) consecutive failed polls, or when the last
  success (or, before any success, the device's creation) is more than
  ``OFFLINE_AFTER_S`` (60 s, monotonic) ago at a failed poll;
* back to OK on the next successful poll.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.types import Health

OFFLINE_AFTER = 3
OFFLINE_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class HealthState:
    health: Health
    failures: int  # consecutive failed polls
    last_ok: float  # monotonic time of the last success (or of creation, before any)


def next_health(
    s: HealthState,
    success: bool,
    now: float,
    offline_after: int = OFFLINE_AFTER,
    offline_after_s: float = OFFLINE_AFTER_S,
) -> HealthState:
    """The health after one poll (see the module doc for the rule)."""
    if success:
        return HealthState(Health.OK, 0, now)
    failures = s.failures + 1
    offline = failures >= offline_after or now - s.last_ok > offline_after_s
    return HealthState(Health.OFFLINE if offline else Health.DEGRADED, failures, s.last_ok)
