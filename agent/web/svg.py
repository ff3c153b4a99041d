"""Time-series plots as inline SVG, drawn on the server. Pure: numbers in, markup out.

A plot has series (one polyline per run of known values: a missing value breaks the
line, an isolated point gets a dot), horizontal reference lines (contract, delivery
terms) and marked periods (``no_data`` shaded, ``interpolated`` hatched). Every element
carries a class and data attributes, so the page can be checked by its DOM, and there is
no script and no style attribute (the Content-Security-Policy allows neither).
More than ``MAX_POINTS`` points are averaged into that many buckets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

W, H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
MAX_POINTS = 720


@dataclass(frozen=True)
class Series:
    name: str  # the record field, e.g. flow_avg_m3h
    label: str
    points: Sequence[tuple[float, float | None]]  # (t, value or None)
    css: str = "s0"


@dataclass(frozen=True)
class RefLine:
    label: str
    value: float
    css: str = "ref"


@dataclass(frozen=True)
class Span:
    t0: float
    t1: float
    kind: str  # no_data | interpolated


@dataclass(frozen=True)
class Plot:
    title: str
    unit: str
    t0: float
    t1: float
    series: Sequence[Series]
    refs: Sequence[RefLine] = ()
    spans: Sequence[Span] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def downsample(
    points: Sequence[tuple[float, float | None]], t0: float, t1: float, n: int = MAX_POINTS
) -> list[tuple[float, float | None]]:
    """At most ``n`` points: unchanged when fewer, else bucket means (None when a
    bucket has no value)."""
    if len(points) <= n or t1 <= t0:
        return list(points)
    width = (t1 - t0) / n
    sums: dict[int, list[float]] = {}
    for t, v in points:
        b = min(n - 1, max(0, int((t - t0) / width)))
        acc = sums.setdefault(b, [0.0, 0.0])
        if v is not None:
            acc[0] += v
            acc[1] += 1
    return [
        (t0 + (b + 0.5) * width, acc[0] / acc[1] if acc[1] else None)
        for b, acc in sorted(sums.items())
    ]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}" if abs(v) < 1 else f"{v:.1f}"


def _range(plot: Plot) -> tuple[float, float]:
    vals = [v for s in plot.series for _, v in s.points if v is not None]
    vals += [r.value for r in plot.refs]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.08
    return (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad


def time_labels(t0: float, t1: float) -> list[tuple[float, str]]:
    """Local-time labels every 3, 6 or 12 hours (or finer for short spans)."""
    span = t1 - t0
    step = next((s for s in (600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600) if span / s <= 8),
                86400)  # fmt: skip
    off = time.localtime(t0).tm_gmtoff
    first = math.ceil((t0 + off) / step) * step - off
    out: list[tuple[float, str]] = []
    t = float(first)
    while t <= t1:
        lt = time.localtime(t)
        label = time.strftime("%H:%M" if lt.tm_hour or lt.tm_min else "%a %d", lt)
        out.append((t, label))
        t += step
    return out


def render(plot: Plot, pid: str) -> str:
    """The SVG of one plot (pid: a unique id prefix on the page)."""
    lo, hi = _range(plot)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    tspan = max(plot.t1 - plot.t0, 1e-9)

    def x(t: float) -> float:
        return LEFT + (t - plot.t0) / tspan * pw

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * ph

    out = [
        f'<svg class="plot" id="{pid}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(plot.title)}" preserveAspectRatio="xMidYMid meet">',
        f'<defs><pattern id="{pid}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" class="hatch"/>'
        "</pattern></defs>",
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>',
    ]
    for sp in plot.spans:
        x0, x1 = max(LEFT, x(sp.t0)), min(LEFT + pw, x(sp.t1))
        if x1 <= x0:
            continue
        fill = f' fill="url(#{pid}-hatch)"' if sp.kind == "interpolated" else ""
        out.append(
            f'<rect class="span {escape(sp.kind)}" data-kind="{escape(sp.kind)}" '
            f'x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1.0):.1f}" height="{ph}"{fill}>'
            f"<title>{escape(sp.kind)}</title></rect>"
        )
    for v in nice_ticks(lo, hi):
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">'
            f"{_fmt(v)}</text>"
        )
    for t, label in time_labels(plot.t0, plot.t1):
        out.append(
            f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
            f'<text class="tick" x="{x(t):.1f}" y="{H - 8}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    for r in plot.refs:
        out.append(
            f'<line class="{r.css}" data-ref="{escape(r.label)}" data-value="{r.value:g}" '
            f'x1="{LEFT}" x2="{LEFT + pw}" y1="{y(r.value):.1f}" y2="{y(r.value):.1f}">'
            f"<title>{escape(r.label)} {r.value:g} {escape(plot.unit)}</title></line>"
        )
    for s in plot.series:
        out.extend(_series(s, x, y))
    out.append("</svg>")
    return "".join(out)


def _series(s: Series, fx: Callable[[float], float], fy: Callable[[float], float]) -> list[str]:
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in s.points:
        if v is None or not math.isfinite(v):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((fx(t), fy(v)))
    n = sum(len(r) for r in runs)
    out = [f'<g class="series {s.css}" data-series="{escape(s.name)}" data-points="{n}">']
    for run in runs:
        if not run:
            continue
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in run)
        out.append(f'<polyline points="{pts}" data-n="{len(run)}"/>')
        if len(run) == 1:
            out.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2.5"/>')
    out.append("</g>")
    return out
