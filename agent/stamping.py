"""Record timestamps for readings: never by an unsynchronised clock. Pure over readings.

Each reading carries the wall time, the monotonic time and whether the wall clock was
synchronised when it was taken (``drivers.types.Reading``). ``ReadingStamper.push``
returns the readings that can be placed on the record time line, with their time and
flags:

* before the first synchronised reading of this process, readings are held (bounded,
  oldest dropped first and counted); at the first synchronised reading each held one is
  restamped from the monotonic clock, ``ts = sync_wall - (sync_mono - mono)``, and
  flagged ``clock_unsynced`` (taken before sync, placed by the synchronised clock);
* once synchronised, readings are placed on the monotonic clock's time line, anchored to
  the synchronised wall clock (the kernel clock keeps running even if NTP is lost later,
  so readings keep their wall time while the two agree within ``step_s``, and the anchor
  follows the wall clock's slewing);
* a clock step (the wall clock leaves the monotonic time line by more than ``step_s``) is
  counted (``steps``, ``last_step_s``); the readings taken while the wall clock disagrees
  are placed by the monotonic clock and flagged ``clock_step``, so a wall clock that jumps
  ahead never closes a period the monotonic clock has not seen pass. A step that persists
  for ``confirm_s`` and is at most ``accept_s`` is accepted (``accepted``): the anchor
  moves to the new wall clock. A larger one never is (a year's jump would otherwise book
  a year of records): the readings stay on the monotonic time line, flagged;
* a reading whose time is not after the last one placed is dropped (after an accepted
  backward step it would land in a period already seen from the other side), so the
  record time line only moves forward.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from drivers.types import Reading

Stamped = tuple[Reading, float, frozenset[str]]
UNSYNCED = frozenset({"clock_unsynced"})
NONE: frozenset[str] = frozenset()
STEP = frozenset({"clock_step"})


@dataclass
class ReadingStamper:
    max_held: int = 20_000
    step_s: float = 1.0
    confirm_s: float = 120.0
    accept_s: float = 60.0
    synced: bool = False
    held: deque[Reading] = field(default_factory=deque)
    dropped_unsynced: int = 0
    dropped_backward: int = 0
    steps: int = 0
    accepted: int = 0
    last_step_s: float = 0.0
    offset: float | None = None  # the time line: record time = mono + offset
    stepped: tuple[float, float] | None = None  # a step in progress: (its offset, since mono)
    last_ts: dict[str, float] = field(default_factory=dict)

    def push(self, r: Reading) -> list[Stamped]:
        if not self.synced and not r.synced:
            self.held.append(r)
            if len(self.held) > self.max_held:
                self.held.popleft()
                self.dropped_unsynced += 1
            return []
        out: list[Stamped] = []
        if not self.synced:
            self.synced = True
            for h in self.held:
                out.append((h, r.ts - (r.mono - h.mono), UNSYNCED))
            self.held.clear()
        out.append(self._place(r))
        placed: list[Stamped] = []
        for rr, ts, flags in out:
            last = self.last_ts.get(rr.device)
            if last is not None and ts <= last:
                self.dropped_backward += 1
                continue
            self.last_ts[rr.device] = ts
            placed.append((rr, ts, flags))
        return placed

    def _place(self, r: Reading) -> Stamped:
        off = r.ts - r.mono
        if self.offset is None or abs(off - self.offset) <= self.step_s:
            self.offset = off  # agreeing (or the first): follow the wall clock
            self.stepped = None
            return (r, r.ts, NONE)
        d = off - self.offset
        if self.stepped is None or abs(off - self.stepped[0]) > self.step_s:
            self.steps += 1
            self.last_step_s = d
            self.stepped = (off, r.mono)
        elif r.mono - self.stepped[1] >= self.confirm_s and abs(d) <= self.accept_s:
            self.accepted += 1
            self.offset = off
            self.stepped = None
            return (r, r.ts, STEP)
        return (r, r.mono + self.offset, STEP)
