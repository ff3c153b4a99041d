"""`dh-agent scan --port DEV [--baudrate N] [--secondary]`: the meters on a wired M-Bus line.

Primary sweep: SND_NKE to each address 0..250 (``--max-address`` to stop earlier); an
address that acks (E5) is asked for its data (REQ_UD2) and its fixed header printed. A
garbled ack (two meters on one address) is reported on stderr.

Secondary search (``--secondary``): the usual tree search over the identification number,
most significant digit first. A select (SND_UD CI 0x52 to 253) with the pattern is
answered E5 by every matching meter; a REQ_UD2 to 253 then gets one clean reply (exactly
one meter matches: found), nothing (no meter), or a garbled one (a collision: several
match, so the next digit is fixed 0..9 in turn). Wildcards are F nibbles; manufacturer,
version and medium stay wild.

One JSON line per meter on stdout: ``address`` (null when found by secondary search),
``id``, ``manufacturer``, ``version``, ``medium``; the line's counters on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, Literal, TextIO

from drivers.errors import ConnectError, TransportError
from drivers.mbus_app import MbusDecodeError, Telegram, decode_user_data
from drivers.mbus_frame import ADDR_SELECTED, Ack, Frame, req_ud2, select_secondary, snd_nke
from drivers.mbus_master import MbusLine, MbusTimeout, reply_timeout_s

Probe = Literal["none", "one", "collision"]
Found = Callable[[dict[str, Any]], None]


def meter_line(t: Telegram, address: int | None) -> dict[str, Any]:
    h = t.header
    return {
        "address": address,
        "id": h.id if h else None,
        "manufacturer": h.manufacturer if h else None,
        "version": h.version if h else None,
        "medium": h.medium if h else None,
    }


class Scanner:
    def __init__(self, line: MbusLine, timeout_s: float, retries: int = 1) -> None:
        self.line = line
        self.timeout_s = timeout_s
        self.retries = retries
        self.stats = {"probes": 0, "collisions": 0, "timeouts": 0, "bad_replies": 0}

    async def _ask(
        self, frame: bytes, want: Literal["ack", "frame"], retries: int | None = None
    ) -> Frame | Ack | None:
        """One request (retried on a timeout only); None = no answer. A garbled, cut or
        checksum-failed reply raises (the caller decides: a collision)."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            self.stats["probes"] += 1
            try:
                async with self.line.lock:
                    got = await self.line.exchange(frame, self.timeout_s, want)
                return got
            except MbusTimeout:
                self.stats["timeouts"] += 1
                if attempt >= retries:
                    return None
        return None

    async def primary(self, addresses: range, found: Found) -> None:
        for a in addresses:
            try:
                if await self._ask(snd_nke(a), "ack") is None:
                    continue
                reply = await self._ask(req_ud2(a, True), "frame")
            except ConnectError:
                raise
            except TransportError as e:
                self.stats["collisions"] += 1
                print(f"scan: address {a}: garbled reply ({e}); two meters?", file=sys.stderr)
                continue
            if not isinstance(reply, Frame) or reply.ci is None:
                continue
            try:
                found(meter_line(decode_user_data(reply.ci, reply.data), a))
            except MbusDecodeError as e:
                self.stats["bad_replies"] += 1
                print(f"scan: address {a}: {e}", file=sys.stderr)

    async def probe(self, pattern: str) -> tuple[Probe, Telegram | None]:
        """Select ``pattern``, then ask the selected meter(s) for data."""
        collided = False
        try:  # one select per pattern, no retry (as usual in a wildcard search)
            if await self._ask(select_secondary(pattern), "ack", retries=0) is None:
                return "none", None
        except ConnectError:
            raise
        except TransportError:
            collided = True  # a garbled ack: more than one meter matched
        try:
            reply = await self._ask(req_ud2(ADDR_SELECTED, True), "frame")
        except ConnectError:
            raise
        except TransportError:
            return "collision", None
        finally:
            self.line.selected = None
        if not isinstance(reply, Frame) or reply.ci is None:
            return ("collision" if collided else "none"), None
        try:
            return "one", decode_user_data(reply.ci, reply.data)
        except MbusDecodeError:
            return "collision", None

    async def secondary(self, found: Found, pattern: str = "FFFFFFFF", pos: int = -1) -> None:
        """Tree search below ``pattern`` whose digits before ``pos`` + 1 are fixed."""
        if pos < 0:
            kind, t = await self.probe(pattern)
            if kind == "one" and t is not None:
                found(meter_line(t, None))
            elif kind == "collision":
                await self.secondary(found, pattern, 0)
            return
        for d in "0123456789":
            p = pattern[:pos] + d + pattern[pos + 1 :]
            kind, t = await self.probe(p)
            if kind == "one" and t is not None:
                found(meter_line(t, None))
            elif kind == "collision":
                self.stats["collisions"] += 1
                if pos < 7:
                    await self.secondary(found, p, pos + 1)
                else:
                    print(f"scan: {p}: several meters with one number", file=sys.stderr)


async def scan(
    port: str,
    baudrate: int,
    secondary: bool,
    found: Found,
    max_address: int = 250,
    timeout_s: float | None = None,
) -> dict[str, int]:
    line = MbusLine(port, baudrate)
    s = Scanner(line, timeout_s if timeout_s is not None else reply_timeout_s(baudrate))
    try:
        if secondary:
            await s.secondary(found)
        else:
            await s.primary(range(0, max_address + 1), found)
    finally:
        await line.close()
    return {**s.stats, "garbage_bytes": line.garbage_bytes}


def run_scan(
    port: str,
    baudrate: int,
    secondary: bool,
    out: TextIO,
    max_address: int = 250,
    timeout_s: float | None = None,
) -> int:
    """Exit 0 when at least one meter answered, 1 when none, 2 when the port failed."""
    n = [0]

    def found(m: dict[str, Any]) -> None:
        n[0] += 1
        out.write(json.dumps(m) + "\n")
        out.flush()

    try:
        stats = asyncio.run(scan(port, baudrate, secondary, found, max_address, timeout_s))
    except ConnectError as e:
        print(f"scan: {e}", file=sys.stderr)
        return 2
    print(f"scan: {n[0]} meter(s); {json.dumps(stats)}", file=sys.stderr)
    return 0 if n[0] else 1
