"""Record timestamps for readings: never by an unsynchronised clock. Pure over readings.

Each reading carries the wall time, the monotonic time and whether the wall clock was
synchronised when it was taken (``drivers.types.Reading``). ``ReadingStamper.push``
returns the readings that can be placed on the record time line, with their time and
flags:

* before the first synchronised reading of this process, readings are held (bounded,
  oldest dropped first and counted); at the first synchronised reading each held one is
  restamped from the monotonic clock, ``ts = sync_wall - (sync_mono - mono)``, and
  flagged ``clock_unsynced`` (taken before sync, placed by the synchronised clock);
* once synchronised, the kernel clock keeps running even if NTP is lost later (it would
  report unsynchronised after hours without a server), so readings keep their wall time;
* a clock step (the wall-minus-monotonic offset moves by more than ``step_s``) is
  counted; a reading whose time is not after the last one placed is dropped (after a
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


@dataclass
class ReadingStamper:
    max_held: int = 20_000
    step_s: float = 1.0
    synced: bool = False
    held: deque[Reading] = field(default_factory=deque)
    dropped_unsynced: int = 0
    dropped_backward: int = 0
    steps: int = 0
    last_step_s: float = 0.0
    offset: float | None = None
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
        off = r.ts - r.mono
        if self.offset is not None and abs(off - self.offset) > self.step_s:
            self.steps += 1
            self.last_step_s = off - self.offset
        self.offset = off
        out.append((r, r.ts, NONE))
        placed: list[Stamped] = []
        for rr, ts, flags in out:
            last = self.last_ts.get(rr.device)
            if last is not None and ts <= last:
                self.dropped_backward += 1
                continue
            self.last_ts[rr.device] = ts
            placed.append((rr, ts, flags))
        return placed
