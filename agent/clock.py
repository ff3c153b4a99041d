"""The production clock: system wall and monotonic time, and whether the wall clock is
synchronised (the gateway has no RTC: until NTP has set it, it may say anything).

``synced()`` follows ``DH_AGENT_CLOCK``:

* ``auto`` (default): synchronised when the kernel says so (``adjtimex``: not
  ``TIME_ERROR``, i.e. ``STA_UNSYNC`` clear), or systemd-timesyncd has flagged
  ``/run/systemd/timesync/synchronized``, or we run in a container (the clock is the
  host's; a container cannot set it and the host keeps it, often without the kernel's NTP
  status, e.g. kvm-clock);
* ``ntp``: only the kernel / timesyncd status counts (a bare gateway in the field);
* ``trust``: always synchronised (bench rigs, a gateway with a known-good RTC).

The answer is cached for ``recheck_s`` (monotonic), so polling it is cheap.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from pathlib import Path

TIME_ERROR = 5
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library already loaded in this process (no ``find_library``: that runs
    ``ldconfig`` in a child process, and this is asked every few seconds)."""
    return ctypes.CDLL(None, use_errno=True)


def kernel_synced() -> bool | None:
    """The kernel's NTP status via adjtimex(2) read-only; None when unavailable."""
    try:
        buf = ctypes.create_string_buffer(512)  # struct timex (208 bytes on 64-bit), modes = 0
        state = int(_libc().adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


@functools.cache
def in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        return b"container=" in Path("/proc/1/environ").read_bytes()
    except OSError:
        return False


def system_clock_synced(mode: str = "auto") -> bool:
    if mode == "trust":
        return True
    if kernel_synced() or TIMESYNCD_FLAG.exists():
        return True
    return mode == "auto" and in_container()


class SyncClock:
    """``drivers.types.Clock`` on the system clocks with real sync detection."""

    def __init__(self, mode: str | None = None, recheck_s: float = 5.0) -> None:
        self.mode = mode or os.environ.get("DH_AGENT_CLOCK", "auto")
        if self.mode not in ("auto", "ntp", "trust"):
            raise ValueError(f"DH_AGENT_CLOCK={self.mode!r}: use auto, ntp or trust")
        self.recheck_s = recheck_s
        self._at = -1e18
        self._synced = False

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._at >= self.recheck_s:
            self._synced = system_clock_synced(self.mode)
            self._at = now
        return self._synced
