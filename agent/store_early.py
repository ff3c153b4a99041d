"""Opening the store while `dh-agent run` is still importing the rest of the agent.

Opening the database is mostly waiting for the disk: a new database syncs the file, its
journal and the folder some nine times (about 20-30 ms on the test machine, more on an SD
card), and every start writes the boot number and reserves the status seqs of its first
connection (two durable commits, 5-10 ms each). Importing asyncio, the MQTT client and
the agent's modules is about 60 ms of CPU. So ``cmd_run`` starts the store's own thread
on all of that right after reading the config, then imports the rest; the agent takes
the open store from here (``Agent(early=...)``), on the same thread every later store
call runs on.

The store's thread needs the GIL between its SQLite calls, and the importing thread keeps
it for up to the interpreter's switch interval (5 ms) each time: with some fifty calls to
make, the opening could not end before the imports did (measured: the store done 6 ms
after 150 ms of imports). So the switch interval is 0.5 ms until the boot is counted, then
back to what it was (the same opening ends after about 90 ms of the 150).

An error while opening is the agent's to handle, as if it had opened the store itself
(``StorageGuard.open``: degraded mode, a corrupt database set aside). If the config in
effect names another store than the one opened early (it cannot today: a remote overlay
does not change ``[storage]``), the early store is closed and the agent opens its own.
"""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import Future, ThreadPoolExecutor

from agent.config_types import StorageCfg
from agent.store import Store


def open_store(cfg: StorageCfg) -> Store:
    """The store as the agent opens it (``Agent`` uses this too)."""
    return Store(cfg.path, max_mb=cfg.max_mb, sample_retention_days=cfg.sample_retention_days)


class EarlyStore:
    """The store's thread, already opening the store named by ``cfg`` and then counting
    the boot."""

    SWITCH_S = 0.0005  # the interpreter's switch interval while the store opens

    def __init__(self, cfg: StorageCfg) -> None:
        self.cfg = cfg
        self.switch_s = sys.getswitchinterval()
        sys.setswitchinterval(min(self.switch_s, self.SWITCH_S))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.opened: Future[Store] = self.executor.submit(open_store, cfg)
        self.boot: Future[int | None] = self.executor.submit(self._next_boot)
        self.boot.add_done_callback(lambda _: sys.setswitchinterval(self.switch_s))

    def _next_boot(self) -> int | None:
        """The boot number, or None when it could not be had: the agent then asks the
        store again in its own way, which handles the error (or the bug) as it always does."""
        try:
            st = self.opened.result()
            boot = st.next_boot()
        except Exception:
            return None
        # the seqs of the first ``online`` status and its will (``Uplink._reserve``); an
        # error here is met again by the uplink's own ``next_seq``
        with contextlib.suppress(Exception):
            st.reserve_live("status")
        return boot

    def take(self, cfg: StorageCfg) -> tuple[Future[Store], Future[int | None]] | None:
        """The opening and the boot number, for the store the agent is about to use; None
        when ``cfg`` names another one (the early one is then closed on its thread)."""
        if cfg == self.cfg:
            return self.opened, self.boot

        def close() -> None:
            if self.opened.exception() is None:
                self.opened.result().close()

        self.executor.submit(close)
        return None
