"""`dh-agent customer`: the customer's read-only Modbus TCP server (terms 6.8).

Its own process. It reads ONLY the live snapshot file the agent writes
(``agent.snapshot.read_snapshot``, docs/live-snapshot.md) and serves it in the register
map of ``agent.customer_map`` (docs/customer-modbus.md). Nothing a client sends reaches
the agent, the devices or the store: there is no path back (no socket, file or store
handle towards them is ever opened here).

Bounds: at most ``customer.max_connections`` clients (more are closed at once), one
request at a time per connection (a client that pipelines waits: TCP back-pressure), a
token bucket of ``customer.max_requests_s`` answers per second over all clients (a flood
is slowed, never queued without bound), ``customer.idle_timeout_s`` for a silent client,
MBAP frames of at most 260 bytes. The register image is rebuilt from the snapshot at most
every 0.5 s.

The protocol is Modbus TCP (MBAP header + PDU) on asyncio streams, in about 60 lines, not
pymodbus' server: that one starts a task per request without a per-connection bound or
connection limit, which is what a BMS flood must not be able to exploit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
import time
from collections.abc import Mapping

from agent.config import Config
from agent.customer_map import Memory, answer, build_image
from agent.snapshot import freshness, read_snapshot

log = logging.getLogger("dh.customer")
REBUILD_S = 0.5


class TokenBucket:
    """``rate`` tokens per second, burst ``rate``; ``take`` waits for one."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:  # one waiter at a time: fair, bounded
            while True:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class CustomerServer:
    def __init__(self, cfg: Config, listen: str | None = None) -> None:
        self.cfg = cfg
        host, _, port = (listen or cfg.customer.listen).rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.mem = Memory()
        self.image: Mapping[int, int] = build_image(None, time.time(), "missing", self.mem)
        self.built = -1e9
        self.bucket = TokenBucket(cfg.customer.max_requests_s)
        self.clients = 0
        self.served = 0
        self.refused = 0
        self.server: asyncio.Server | None = None

    def current(self) -> Mapping[int, int]:
        now_m = time.monotonic()
        if now_m - self.built >= REBUILD_S:
            self.built = now_m
            snap = read_snapshot(self.cfg.live.path)
            now = time.time()
            state = freshness(snap, now, self.cfg.live.every_s)
            self.image = build_image(snap, now, state, self.mem)
        return self.image

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.handle, self.host, self.port, limit=512)
        addr = self.server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.cfg.customer.max_connections:
            self.refused += 1
            writer.close()
            return
        self.clients += 1
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self.cfg.customer.idle_timeout_s
        while True:
            head = await asyncio.wait_for(reader.readexactly(7), idle)
            tid, proto, length, unit = struct.unpack(">HHHB", head)
            if proto != 0 or not 2 <= length <= 254:
                return  # not Modbus TCP: drop the connection
            pdu = await asyncio.wait_for(reader.readexactly(length - 1), idle)
            await self.bucket.take()
            resp = answer(self.current(), pdu)
            writer.write(struct.pack(">HHHB", tid, 0, len(resp) + 1, unit) + resp)
            await writer.drain()
            self.served += 1

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


async def serve(cfg: Config, listen: str | None = None, ready: bool = True) -> None:
    srv = CustomerServer(cfg, listen)
    host, port = await srv.start()
    log.info("customer Modbus TCP on %s:%d (snapshot %s)", host, port, cfg.live.path)
    print(f"listening {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready:
        from agent.notify import Notifier

        Notifier().ready()
    await stop.wait()
    await srv.close()
    log.info("customer server stopped: %d answered, %d refused", srv.served, srv.refused)


def run_customer(cfg: Config, listen: str | None = None) -> int:
    if not cfg.customer.enabled and listen is None:
        log.warning("customer interface disabled ([customer] enabled = false): not serving")
        print("customer interface disabled in the config ([customer] enabled = false)")
        from agent.notify import Notifier

        Notifier().ready()  # under systemd (Type=notify): a clean start that ends at once
        return 0
    try:
        asyncio.run(serve(cfg, listen))
    except OSError as e:
        log.error("customer server: %s", e)
        return 1
    return 0
