"""The page server's routes: gather the data (live snapshot, read-only store) on one
worker thread and hand it to the pure page builders. Nothing here writes anything."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

from agent import advice, snapshot
from agent.config import Config
from agent.protocol import HEAT_METER
from agent.web import charts, pages
from agent.web.data import StoreReader
from agent.web.http import HttpError, Request, Response, error_response

T = TypeVar("T")
PLOT_HOURS = 48
EVENT_DAYS = 7
ADVICE_CACHE_S = 600.0


def release_free_memory() -> None:
    """Give the heap a page's work freed back to the OS (glibc malloc_trim): the server sits
    idle between a technician's visits and should not keep the peak of a year's advice."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def trimmed(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    finally:
        release_free_memory()


def public_device(d: Any) -> dict[str, Any]:
    """The config of one device as the devices page shows it (nothing secret in it)."""
    out: dict[str, Any] = {"name": d.name, "role": d.role, "profile": d.profile}
    out["transport"] = d.transport
    if d.transport == "tcp":
        out["address"] = f"{d.host}:{d.port}"
    else:
        out["port"] = d.port
        out["serial"] = f"{d.baudrate} {8}{d.parity}{d.stopbits}"
    out["unit"] = d.unit
    out["poll_s"] = d.poll_s
    return out


def plot_hours(values: list[str] | None) -> float:
    """The ``hours`` query of /plots: 0.1..48 (default 48); anything else is a 400."""
    if not values:
        return float(PLOT_HOURS)
    try:
        h = float(values[0])
    except ValueError:
        raise HttpError(400, "hours: a number 0.1..48") from None
    if not 0.1 <= h <= PLOT_HOURS:
        raise HttpError(400, "hours: a number 0.1..48")
    return h


class WebApp:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.site = cfg.site.id
        self.reader = StoreReader(cfg.storage.path)
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-db")
        self.css = resources.files("agent.web").joinpath("style.css").read_bytes()
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/": self.overview,
            "/plots": self.plots,
            "/events": self.events,
            "/advice": self.advice,
            "/devices": self.devices,
            "/style.css": self.style,
        }
        self._advice: tuple[float, dict[str, Any] | None] | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db, functools.partial(trimmed, fn, *args))

    async def handle(self, req: Request) -> Response:
        route = self.routes.get(req.path)
        if route is None:
            return error_response(404, f"no page {req.path[:100]!r}")
        return await route(req)

    def close(self) -> None:
        self.db.submit(self.reader.close).result()
        self.db.shutdown(wait=True)

    # --- data --------------------------------------------------------------------------

    def _snapshot(self) -> tuple[dict[str, Any] | None, str]:
        snap = snapshot.read_snapshot(self.cfg.live.path)
        if snap is not None and snap.get("site") != self.site:
            snap = None  # another agent's file: not ours to show
        return snap, snapshot.freshness(snap, self.clock(), self.cfg.live.every_s)

    def _terms(self, snap: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        c, d = self.cfg.contract, self.cfg.delivery
        contract = {"flow_limit_m3h": c.flow_limit_m3h, "power_limit_kw": c.power_limit_kw,
                    "enforce": c.enforce}  # fmt: skip
        delivery = dataclasses.asdict(d)
        if snap is not None:  # the terms in force (a remote config/set may have changed them)
            contract = snap.get("contract") or contract
            delivery = snap.get("delivery") or delivery
        return contract, delivery

    def _overview_data(self) -> tuple[dict[str, Any] | None, str]:
        snap, state = self._snapshot()
        if snap is None:  # the agent is not running: what the store knows
            meta = self.reader.meta()
            snap_off: dict[str, Any] = {
                "boot": meta.get("boot"),
                "uplink": {"connected": False, "backlog": self.reader.backlog(),
                           "last_publish": float(meta["last_publish"])
                           if meta.get("last_publish") else None},
            }  # fmt: skip
            return snap_off, state
        return snap, state

    def _plots(self, hours: float) -> tuple[list[Any], float, float, int]:
        snap, _ = self._snapshot()
        contract, delivery = self._terms(snap)
        t1 = self.clock()
        t0 = t1 - hours * 3600
        plots, count = [], 0
        for d in self.cfg.devices:
            recs = self.reader.intervals(d.name, t0 - self.cfg.site.period_s, t1)
            count += len(recs)
            plots += charts.device_plots(d.name, d.role, recs, t0, t1, contract, delivery)
        return plots, t0, t1, count

    def _advice_data(self) -> tuple[dict[str, Any] | None, str | None]:
        meter = next((d.name for d in self.cfg.devices if d.role == HEAT_METER), None)
        if meter is None:
            return None, None
        now = self.clock()
        if self._advice is not None and now - self._advice[0] < ADVICE_CACHE_S:
            return self._advice[1], meter
        snap, _ = self._snapshot()
        contract, _ = self._terms(snap)
        recs = self.reader.iter_intervals(meter, now - advice.YEAR_S - 3600, now)
        review = advice.contract_review(
            recs, now, contract.get("flow_limit_m3h"), contract.get("power_limit_kw")
        )
        self._advice = (now, review)
        return review, meter

    # --- routes -------------------------------------------------------------------------

    async def overview(self, req: Request) -> Response:
        snap, state = await self.call(self._overview_data)
        contract, _ = self._terms(None)
        devices = [(d.name, d.role) for d in self.cfg.devices]
        now = self.clock()
        body = pages.overview(self.site, devices, snap, state, now, contract,
                              self.cfg.web.refresh_s)  # fmt: skip
        return Response(200, body)

    async def plots(self, req: Request) -> Response:
        hours = plot_hours(req.query.get("hours"))
        plots, t0, t1, count = await self.call(self._plots, hours)
        return Response(200, pages.plots_page(self.site, plots, t0, t1, count, hours))

    async def events(self, req: Request) -> Response:
        since = self.clock() - EVENT_DAYS * 86400
        evs = await self.call(self.reader.events, since)
        return Response(200, pages.events_page(self.site, evs, EVENT_DAYS))

    async def advice(self, req: Request) -> Response:
        review, meter = await self.call(self._advice_data)
        return Response(200, pages.advice_page(self.site, review, meter))

    async def devices(self, req: Request) -> Response:
        snap, _ = await self.call(self._snapshot)
        devs = [public_device(d) for d in self.cfg.devices]
        return Response(200, pages.devices_page(self.site, devs, snap))

    async def style(self, req: Request) -> Response:
        return Response(200, self.css, "text/css; charset=utf-8")
