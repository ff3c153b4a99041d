"""Opening the store while `dh-agent run` is still importing the rest of the agent.

Opening the database is mostly waiting for the disk: a new database syncs the file, its
journal and the folder some nine times (about 20-30 ms on the test machine, more on an SD
card), and every start writes the boot number (one WAL commit, 5-10 ms). Importing
asyncio, the MQTT client and the agent's modules is about 60 ms of CPU. So ``cmd_run``
starts the store's own thread on the opening (and the boot number) right after reading
the config, then imports the rest; the agent takes the open store from here
(``Agent(early=...)``), on the same thread every later store call runs on.

An error while opening is the agent's to handle, as if it had opened the store itself
(``StorageGuard.open``: degraded mode, a corrupt database set aside). If the config in
effect names another store than the one opened early (it cannot today: a remote overlay
does not change ``[storage]``), the early store is closed and the agent opens its own.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from agent.config_types import StorageCfg
from agent.store import Store


def open_store(cfg: StorageCfg) -> Store:
    """The store as the agent opens it (``Agent`` uses this too)."""
    return Store(cfg.path, max_mb=cfg.max_mb, sample_retention_days=cfg.sample_retention_days)


class EarlyStore:
    """The store's thread, already opening the store named by ``cfg`` and then counting
    the boot."""

    def __init__(self, cfg: StorageCfg) -> None:
        self.cfg = cfg
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.opened: Future[Store] = self.executor.submit(open_store, cfg)
        self.boot: Future[int | None] = self.executor.submit(self._next_boot)

    def _next_boot(self) -> int | None:
        """The boot number, or None when it could not be had: the agent then asks the
        store again in its own way, which handles the error (or the bug) as it always does."""
        try:
            return self.opened.result().next_boot()
        except Exception:
            return None

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
