"""Read-only views of the store for the tools (``dh-agent status``)."""

from __future__ import annotations

from agent.store import Store
from agent.timefmt import rfc3339


def refused_lines(store: Store) -> list[str]:
    """The messages the broker refused for good (kept; ``cmd resend`` queues them again)."""
    counts = store.refused_count() if store.schema_version >= 2 else {}
    if not counts:
        return []
    out = ["refused by the broker: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))]
    for r in store.refused(10):
        out.append(
            f"  {r['stream']} seq {r['seq']}: {r['reason']} (0x{r['code']:02x})"
            f" at {rfc3339(r['time'])}"
        )
    return out
