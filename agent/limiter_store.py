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
