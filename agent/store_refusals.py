"""Messages the broker refused for good (MQTT 5 PUBACK reason codes) in the local store
(``agent.store``): marked ``sent = 2`` (out of the backlog, still stored) with their code
and reason in ``refusals``; ``Store.mark_unsent`` queues them again. A base of ``Store``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.store_core import StoreCore


class RefusalRecords(StoreCore):
    """The refusal bookkeeping of the outbox."""

    def mark_refused(self, items: Sequence[tuple[int, int, str]]) -> None:
        """Record messages the broker refused for good: (id, reason code, reason). They leave
        the backlog (``sent = 2``) and stay stored; ``mark_unsent`` queues them again."""
        self._check()
        if not items:
            return
        now = float(self.clock())
        with self._txn(durable=False) as c:
            for mid, code, reason in items:
                c.execute("UPDATE messages SET sent = 2 WHERE id = ?", (int(mid),))
                c.execute(
                    "INSERT OR REPLACE INTO refusals(msg, code, reason, time) VALUES (?, ?, ?, ?)",
                    (int(mid), int(code), str(reason), now),
                )

    def refused(self, limit: int = 100) -> list[dict[str, Any]]:
        """Messages refused by the broker and not queued again, oldest first."""
        self._check()
        if self.schema_version < 2:  # an older database opened read-only
            return []
        return [
            {"stream": s, "seq": int(q), "code": int(c), "reason": r, "time": float(t)}
            for s, q, c, r, t in self.conn.execute(
                "SELECT m.stream, m.seq, f.code, f.reason, f.time FROM refusals f"
                " JOIN messages m ON m.id = f.msg WHERE m.sent = 2 ORDER BY f.msg LIMIT ?",
                (limit,),
            )
        ]

    def refused_count(self) -> dict[str, int]:
        """Refused messages per stream."""
        self._check()
        return {
            str(s): int(n)
            for s, n in self.conn.execute(
                "SELECT stream, count(*) FROM messages WHERE sent = 2 GROUP BY stream"
            )
        }
