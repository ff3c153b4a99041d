"""Reading back what an agent stored, and the simulator's truth log, for end-to-end tests.

``stored(tmp, stream)``: the bodies of every message of a stream in the agent's store,
each verified with the agent's public key; with ``chained`` also seq 1..N without a gap
and every ``prev`` the hash of the message before. ``truth_lines``, ``truth_at`` and
``truth_flow_avg`` read the simulator's truth log (JSON lines, one a simulated second).
"""

from __future__ import annotations

import bisect
import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.jws import chain_hash, thumbprint, verify
from agent.keys import load_public
from agent.store import Store


def ts_of(s: str) -> float:
    """An RFC 3339 time of a record or event -> Unix seconds."""
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def stored(
    tmp: Path,
    stream: str,
    *,
    db: Path | None = None,
    chained: bool = False,
    readonly: bool = False,
) -> list[dict[str, Any]]:
    """Bodies of the stream's stored messages in ``db`` (default ``tmp/agent.db``),
    verified with ``tmp/agent.pub``; ``chained``: also seq 1..N and the hash chain."""
    st = Store(db or tmp / "agent.db", readonly=readonly)
    try:
        msgs = st.messages(stream, 1, 10**9)
    finally:
        st.close()
    pub = load_public(tmp / "agent.pub")
    keys = {thumbprint(pub): pub}
    if chained:
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1)), "seq gap or repeat"
    bodies = []
    prev: str | None = None
    for m in msgs:
        env = verify(m.payload, keys)  # raises when a message does not verify
        if chained:
            assert env["seq"] == m.seq
            assert env["prev"] == (chain_hash(prev) if prev else None), f"{stream} {m.seq}"
        prev = m.payload
        bodies.append(env["body"])
    return bodies


def truth_lines(path: Path) -> list[dict[str, Any]]:
    """The truth log's lines (a line being written is skipped)."""
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def truth_at(truth: list[dict[str, Any]], t: float, key: str) -> float:
    """``key`` at time ``t``, interpolated between the two lines around it."""
    ts = [x["t"] for x in truth]
    i = bisect.bisect_left(ts, t)
    if i < len(ts) and ts[i] == t:
        return float(truth[i][key])
    assert 0 < i < len(ts), f"{t} outside the truth log"
    a, b = truth[i - 1], truth[i]
    return float(a[key] + (b[key] - a[key]) * (t - a["t"]) / (b["t"] - a["t"]))


def truth_flow_avg(truth: list[dict[str, Any]], start: float, end: float) -> float:
    """The true average flow (m3/h) from ``start`` to ``end`` (whole seconds)."""
    by_t = {round(x["t"]): x for x in truth}
    a, b = by_t[round(start)], by_t[round(end)]
    return float((b["volume_m3"] - a["volume_m3"]) / ((end - start) / 3600))
