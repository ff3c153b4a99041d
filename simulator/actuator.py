"""The valve actuator and the valve's characteristic, as the plant uses them. Pure.

A real substation valve is driven by an actuator that needs ``stroke_s`` seconds for its
full stroke (60-180 s), ignores a change of its command smaller than ``deadband_pct``,
and reports its actual stem position. The agent writes an opening *limit*; the stroke
limit travels toward it at ``100 / stroke_s`` % per second. ``stroke_s = 0`` is the old
instant actuator (the limit takes effect at once).

The valve characteristic maps the stroke (0..100 %) to the fraction of the valve's full
capacity: ``linear`` (fraction = stroke / 100) or ``equal-percentage`` with
rangeability ``R`` (fraction = R ** (stroke / 100 - 1), closing off below the first
``1 / R`` of capacity, as a real plug does at its seat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHARACTERISTICS = ("linear", "equal-percentage")


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


@dataclass(frozen=True, slots=True)
class Valve:
    characteristic: str = "linear"
    rangeability: float = 50.0

    def fraction(self, stroke_pct: float) -> float:
        """Capacity fraction at a stroke (0..100 %)."""
        s = _clamp(stroke_pct, 0.0, 100.0)
        if self.characteristic == "linear":
            return s / 100.0
        if s <= 0.0:
            return 0.0
        # below the seat region the plug closes linearly to zero (no leakage at 0 %)
        knee = 100.0 / self.rangeability
        if s >= knee:
            return float(self.rangeability ** (s / 100.0 - 1.0))
        return float(self.rangeability ** (knee / 100.0 - 1.0)) * s / knee

    def stroke(self, fraction: float) -> float:
        """The stroke (0..100 %) that gives a capacity fraction (inverse of ``fraction``)."""
        f = _clamp(fraction, 0.0, 1.0)
        if self.characteristic == "linear":
            return 100.0 * f
        if f <= 0.0:
            return 0.0
        s = 100.0 * (1.0 + math.log(f) / math.log(self.rangeability))
        knee = 100.0 / self.rangeability
        if s >= knee:
            return s
        fk = float(self.rangeability ** (knee / 100.0 - 1.0))
        return _clamp(f / fk * knee, 0.0, knee)


class Actuator:
    """The stroke limit following the written limit at a finite speed, with a deadband."""

    def __init__(self, stroke_s: float = 0.0, deadband_pct: float = 0.0) -> None:
        if stroke_s < 0 or deadband_pct < 0:
            raise ValueError("stroke_s and deadband_pct must be >= 0")
        self.stroke_s = float(stroke_s)
        self.deadband_pct = float(deadband_pct)
        self.command_pct = 100.0  # the written limit (the register)
        self.limit_pct = 100.0  # where the stroke limit actually is
        self.moving = False

    def command(self, pct: float, position: float | None = None) -> None:
        """A new limit is written. Within the deadband of where the actuator stands, it
        does not start moving (a moving actuator follows the new target). ``position``:
        where the valve actually is; a limit above it is only virtual, so a lower
        command starts closing from the position, not from the old limit."""
        self.command_pct = _clamp(pct, 0.0, 100.0)
        if position is not None and self.command_pct < position < self.limit_pct:
            self.limit_pct = position
        if self.stroke_s <= 0.0:
            self.limit_pct = self.command_pct
            self.moving = False
            return
        if self.moving or abs(self.command_pct - self.limit_pct) > self.deadband_pct:
            self.moving = self.command_pct != self.limit_pct

    def step(self, h: float) -> None:
        """Travel for ``h`` seconds."""
        if not self.moving:
            return
        d = self.command_pct - self.limit_pct
        v = 100.0 / self.stroke_s * h
        if abs(d) <= v:
            self.limit_pct = self.command_pct
            self.moving = False
        else:
            self.limit_pct += math.copysign(v, d)
