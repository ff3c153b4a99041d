"""`dh-agent serve`: the technician's read-only page, in a process of its own.

Sockets: under systemd socket activation (``LISTEN_PID`` = this process, ``LISTEN_FDS``)
the listening sockets come from systemd (fd 3 on); the server then exits after
``web.idle_exit_s`` without a request (systemd starts it again on the next connection).
Otherwise it binds ``--listen`` or ``[web] listen`` (default 127.0.0.1:8080) and runs in
the foreground until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from agent.config import Config
from agent.web.app import WebApp
from agent.web.http import MAX_LINE, Auth, HttpServer

log = logging.getLogger("dh.web")
SD_LISTEN_FDS_START = 3


def systemd_sockets(env: dict[str, str], pid: int) -> list[socket.socket]:
    """The sockets handed over by systemd, or [] when not socket-activated."""
    if env.get("LISTEN_PID") != str(pid):
        return []
    try:
        n = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out


def split_listen(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--listen: {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def load_auth(cfg: Config) -> Auth | None:
    """Basic auth from ``[web] password_file`` (its first line is the password)."""
    pf = cfg.web.password_file
    if pf is None:
        return None
    try:
        pw = pf.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as e:
        raise SystemExit(f"web.password_file: cannot read a password from {pf}: {e}") from None
    if not pw:
        raise SystemExit(f"web.password_file: {pf} holds an empty password")
    return Auth(cfg.web.user, pw)


async def serve(
    cfg: Config,
    listen: str | None = None,
    idle_exit_s: float | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    app = WebApp(cfg)
    server = HttpServer(app.handle, load_auth(cfg))
    inherited = systemd_sockets(dict(os.environ), os.getpid())
    if idle_exit_s is None:
        idle_exit_s = cfg.web.idle_exit_s if inherited else 0.0
    lim = MAX_LINE + 2
    if inherited:
        servers = [
            await asyncio.start_server(server.serve_connection, sock=s, limit=lim)
            for s in inherited
        ]
    else:
        host, port = split_listen(listen or cfg.web.listen)
        servers = [await asyncio.start_server(server.serve_connection, host, port, limit=lim)]
    addrs = [s.sockets[0].getsockname() for s in servers if s.sockets]
    urls = [f"http://{a[0]}:{a[1]}/" if isinstance(a, tuple) else str(a) for a in addrs]
    log.info("serving %s (site %s)", ", ".join(urls), cfg.site.id)
    if on_ready is not None:
        on_ready(urls[0])
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    server.last_activity = loop.time()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            idle = loop.time() - server.last_activity
            if idle_exit_s and server.active == 0 and idle >= idle_exit_s:
                log.info("idle for %.0f s: exiting (socket activation starts it again)", idle)
                break
    finally:
        for s in servers:
            s.close()
        app.close()
    return 0


def run_serve(cfg: Config, listen: str | None, idle_exit_s: float | None = None) -> int:
    def ready(url: str) -> None:
        print(f"dh-agent serve: {url}", file=sys.stderr, flush=True)

    try:
        return asyncio.run(serve(cfg, listen, idle_exit_s, ready))
    except OSError as e:
        print(f"dh-agent serve: cannot listen: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"dh-agent serve: {e}", file=sys.stderr)
        return 2


__all__ = ["Path", "run_serve", "serve", "split_listen", "systemd_sockets"]
