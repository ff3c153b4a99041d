"""The drain's in-flight window (``agent.uplink_drain``): pure bookkeeping, no I/O."""

from __future__ import annotations

from collections import deque


class Window:
    """In-flight bookkeeping of stored publishes (pure, no I/O): publish order, paho mid ->
    stored id, and the acknowledged prefix. ``len`` counts everything published and not yet
    released (acknowledged ones behind an unacknowledged one included), so at most ``size``
    messages are ever unacknowledged and unmarked."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.peak = 0
        self._order: deque[tuple[int, float]] = deque()  # (stored id, publish time)
        self._mids: dict[int, int] = {}  # mid -> stored id, awaiting PUBACK
        self._done: set[int] = set()  # stored ids acknowledged, not yet released

    def __len__(self) -> int:
        return len(self._order)

    def owns(self, mid: int) -> bool:
        return mid in self._mids

    def sid_of(self, mid: int) -> int | None:
        return self._mids.get(mid)

    def sent(self, sid: int, mid: int, qos: int, now: float) -> list[int]:
        """Record a publish; returns the ids released by it (QoS 0 needs no PUBACK)."""
        order = self._order
        order.append((sid, now))
        if len(order) > self.peak:
            self.peak = len(order)
        if qos:
            # nothing to release: after every call the oldest entry is unacknowledged
            self._mids[mid] = sid
            return []
        self._done.add(sid)
        return self._release()

    def ack(self, mid: int) -> list[int]:
        """A PUBACK for ``mid``; returns the stored ids now acknowledged with every message
        published before them, in publish order."""
        sid = self._mids.pop(mid, None)
        if sid is None:
            return []  # unknown or repeated: the oldest entry is still unacknowledged
        order = self._order
        if order[0][0] != sid:  # acknowledged out of order: waits for the ones before it
            self._done.add(sid)
            return []
        order.popleft()  # the usual case: the oldest one (and what waited behind it)
        return [sid, *self._release()] if self._done else [sid]

    def oldest_age(self, now: float) -> float | None:
        """Seconds the oldest unacknowledged publish has waited, None when none waits."""
        if not self._order:
            return None
        sid, t0 = self._order[0]
        return None if sid in self._done else now - t0

    def _release(self) -> list[int]:
        out: list[int] = []
        order, done = self._order, self._done
        while order and order[0][0] in done:
            sid, _ = order.popleft()
            done.discard(sid)
            out.append(sid)
        return out
