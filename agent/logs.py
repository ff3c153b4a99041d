"""Logging: one line per event worth a technician's attention, to stderr (the journal
under systemd), with repeated device errors rate-limited."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None) -> None:
    """Configure the root logger once; a later call only changes the level."""
    root = logging.getLogger()
    lvl = getattr(logging, (level or "info").upper(), logging.INFO)
    if not getattr(root, "_dh_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        # under systemd the journal adds its own timestamp
        fmt = _FORMAT if "INVOCATION_ID" in os.environ else "%(asctime)s " + _FORMAT
        handler.setFormatter(logging.Formatter(fmt))
        root.handlers[:] = [handler]
        root._dh_configured = True  # type: ignore[attr-defined]
        for noisy in ("pymodbus", "aiomqtt", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    root.setLevel(lvl)


class RateLimiter:
    """Lets a repeated message through once per ``every_s`` per key and counts the rest.

    ``clock`` is an input, so tests need no sleeping.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(log it now?, how many were suppressed since the last one)."""
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
