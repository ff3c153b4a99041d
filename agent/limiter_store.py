"""The limiter's state on disk: one small row in the store's ``meta`` table, written
through the store's own (durable) transaction on the writer thread.

The runner saves it when a period of the limiter's meter closes (right after that
period's records commit), with every batch commit of raw samples (``storage.flush_s``),
and at once when an override starts or ends; it is loaded at start. The budget does not
depend on how fresh the saved copy is: the state holds the register value its volume
was counted up to, so the first reading after a restart adds exactly what the meter
counted meanwhile.
"""

from __future__ import annotations

from typing import Protocol

from agent.limiter_override import view
from agent.limiter_state import LimiterState, from_json, to_json

KEY = "limiter_state"


class MetaStore(Protocol):
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


def save(store: MetaStore, state: LimiterState) -> None:
    """Call on the store's writer thread."""
    store.set_meta(KEY, to_json(state))


def load(store: MetaStore) -> LimiterState | None:
    """The saved state, or None (none saved, unreadable, another version)."""
    return from_json(store.get_meta(KEY))


def describe(s: LimiterState) -> str:
    """One log line about a restored state."""
    return (
        f"period {s.vol.period}, {s.vol.used:.6f} m3 used, limit {s.applied_pct} %, "
        f"limiting {s.limiting}, override {s.override}"
    )


def status_lines(store: MetaStore, now: float) -> list[str]:
    """The limiter's part of ``dh-agent status``: whether a limit is in force, the
    return-temperature limitation and a timed override in force."""
    s = load(store)
    if s is None:
        return []  # never ran (or no limit configured)
    if s.limiting:
        pct = "?" if s.applied_pct is None else f"{s.applied_pct:g} %"
        out = [f"limiter: limiting, actuator limit {pct}"]
    else:
        out = ["limiter: not limiting"]
    if s.ret_allow is not None:
        out.append(f"return-temperature limitation: engaged, flow allowed {s.ret_allow:.3f} m3/h")
    o = view(s.override, now)
    if o is not None:
        what = ", ".join(f"{k} {o[k]:g}" for k in ("flow_limit_m3h", "power_limit_kw") if k in o)
        out.append(f"limit override: {what} until {o['until']} (id {o['id']})")
    return out
