"""dh-sim's wired M-Bus slaves on a pseudo-terminal (EN 13757-2 link layer).

``MbusResponder`` answers on the master side of a pty for one or more simulated meters
(``MbusSlaveSim``): primary address, secondary selection (SND_UD CI 0x52 to 253, F
nibbles / FF bytes as wildcards; a non-matching select deselects), SND_NKE (E5, link
reset), REQ_UD2 with the FCB rule (FCV set and the same FCB as the last answered request:
the last telegram is repeated; otherwise the next one), multi-telegram readings (DIF
0x1F), address 254 (everyone answers), 255 (broadcast, nobody answers). When more than
one slave answers, the replies collide: single characters E5 merge into one E5 (the
line is a wired OR), frames into garbage (bytewise OR), as on a real bus.

Line time: with ``baud`` set, a request counts as arrived only after its own bytes' time
on the line (11 bits a byte), the slave waits 11 bit times, and the reply's bytes are
written paced at that baud rate, so the master sees real line timing.

Faults (scenario ``p_*``, drawn per new REQ_UD2 from the seed; counted in ``faults``
exactly when injected): ``mbus_timeout`` (no answer; the request is not taken, so a
repeat gets a fresh answer), ``mbus_bad_checksum``, ``mbus_cut_short`` (the reply stops
half way), ``mbus_status_error`` (status byte with the temporary-error bit set),
``mbus_multi`` (the reading comes in two telegrams, the first ending with DIF 0x1F),
``mbus_noise`` (three bytes of line noise before the reply: skipped by the master).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import tty
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.mbus_app import encode_manufacturer
from drivers.mbus_frame import (
    ACK,
    ADDR_BROADCAST,
    ADDR_SELECTED,
    ADDR_TEST,
    C_FCB,
    C_FCV,
    C_RSP_UD,
    C_SND_NKE,
    CI_SELECT,
    Frame,
    MbusFrameError,
    frame_length,
    long_frame,
    parse_frame,
)
from simulator.mbus_meter import STATUS_TEMPORARY_ERROR, MeterImage
from simulator.plant import Plant

FRAME_TIMEOUT_S = 0.5
CI_RSP_LONG = 0x72
MBUS_FAULT_KINDS = (
    "mbus_timeout",
    "mbus_bad_checksum",
    "mbus_cut_short",
    "mbus_status_error",
    "mbus_multi",
    "mbus_noise",
)
NOISE = b"\x00\xff\x3c"  # bytes that cannot start a frame


@dataclass
class MbusSlaveSim:
    """One simulated meter's link state."""

    address: int
    meter: MeterImage
    selected: bool = False
    last_fcb: int | None = None  # FCB of the last answered REQ_UD2 (None after a reset)
    last_reply: bytes | None = None
    pending: list[bytes] = field(default_factory=list)  # telegrams still to send
    requests: int = 0

    def matches(self, data: bytes) -> bool:
        """CI 0x52 select data: ID (BCD LSB first, F nibbles wild) MAN VER MED (FF wild)."""
        if len(data) != 8:
            return False
        want = bytes(reversed(data[:4])).hex().upper()
        if any(w != "F" and w != h for w, h in zip(want, self.meter.ident, strict=True)):
            return False
        man = int.from_bytes(data[4:6], "little")
        if man != 0xFFFF and man != encode_manufacturer(self.meter.manufacturer):
            return False
        if data[6] != 0xFF and data[6] != self.meter.version:
            return False
        return data[7] == 0xFF or data[7] == self.meter.medium

    def reset(self) -> None:
        self.last_fcb = None
        self.last_reply = None
        self.pending = []


class MbusResponder:
    """M-Bus slaves on a pty; see the module doc."""

    def __init__(
        self,
        plant: Plant,
        slaves: list[MbusSlaveSim],
        *,
        baud: int | None = None,
        sync: Callable[[], None] | None = None,
        faults: Counter[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.plant = plant
        self.slaves = slaves
        self.baud = baud
        self.sync = sync
        self.faults: Counter[str] = faults if faults is not None else Counter()
        p = plant.params
        self._p = (
            p.p_timeout,
            p.p_bad_crc,
            p.p_mbus_cut,
            p.p_exception,
            p.p_mbus_multi,
            p.p_mbus_noise,
        )
        self._rng = random.Random(f"{seed}:mbus")
        self.path: str | None = None
        self.rx_frames = 0
        self.rx_garbage = 0
        self.req_ud2 = 0
        self.snd_nke = 0
        self.selects = 0
        self._master = -1
        self._slave = -1
        self._buf = bytearray()
        self._last_rx = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._swaps_seen = plant.meter_swaps

    # --- pty ------------------------------------------------------------------------

    def open(self) -> str:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._on_readable)
        self._writer = self._loop.create_task(self._write_loop())
        return self.path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        if self._loop is not None and self._master >= 0:
            self._loop.remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        now = time.monotonic()
        if self._buf and now - self._last_rx > FRAME_TIMEOUT_S:
            self._buf.clear()
        self._last_rx = now
        self._buf += data
        while self._buf:
            try:
                n = frame_length(bytes(self._buf[:3]))
            except MbusFrameError:
                self.rx_garbage += 1
                del self._buf[0]
                continue
            if n is None or len(self._buf) < n:
                return
            raw = bytes(self._buf[:n])
            del self._buf[:n]
            try:
                frame = parse_frame(raw)
            except MbusFrameError:
                self.rx_garbage += 1
                continue
            if isinstance(frame, Frame):
                self.rx_frames += 1
                reply = self.handle(frame)
                if reply:
                    due = now
                    if self.baud:  # the request's own line time + 11 bit times turnaround
                        due += (len(raw) * 11 + 11) / self.baud
                    self._queue.put_nowait((due, reply))

    async def _write_loop(self) -> None:
        while True:
            due, data = await self._queue.get()
            if not self.baud:
                self._write(data)
                continue
            char_s = 11 / self.baud
            start = max(due, time.monotonic())
            sent = 0
            while sent < len(data):
                now = time.monotonic()
                if now < start:
                    await asyncio.sleep(start - now)
                    continue
                n = min(len(data), int((now - start) / char_s) + 1)
                if n > sent:
                    self._write(data[sent:n])
                    sent = n
                if sent < len(data):
                    await asyncio.sleep(max(0.0, start + sent * char_s - time.monotonic()))

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    # --- link layer -------------------------------------------------------------------

    def _check_swap(self) -> None:
        """The plant's meter was replaced: the primary meter gets a new identity."""
        if self.plant.meter_swaps != self._swaps_seen and self.slaves:
            self._swaps_seen = self.plant.meter_swaps
            m = self.slaves[0].meter
            m.ident = f"{(int(m.ident) + 1111) % 10**8:08d}"
            m.billing_ts = None
            self.slaves[0].reset()

    def handle(self, f: Frame) -> bytes | None:
        """One request frame -> the bytes on the line (None: silence)."""
        if self.sync is not None:
            self.sync()
        self._check_swap()
        if f.a == ADDR_BROADCAST:
            if f.ci == CI_SELECT:
                for s in self.slaves:
                    s.selected = False
            return None
        if f.ci == CI_SELECT and f.a == ADDR_SELECTED:
            self.selects += 1
            hit = []
            for s in self.slaves:
                s.selected = s.matches(f.data)
                if s.selected:
                    s.reset()
                    hit.append(s)
            return bytes([ACK]) if hit else None
        targets = [
            s
            for s in self.slaves
            if f.a == ADDR_TEST
            or (f.a == ADDR_SELECTED and s.selected)
            or (f.a == s.address and f.a not in (ADDR_SELECTED, ADDR_TEST))
        ]
        if not targets:
            return None
        c = f.c & ~(C_FCB | C_FCV)
        replies: list[bytes] = []
        if c == C_SND_NKE:
            self.snd_nke += 1
            for s in targets:
                s.reset()
                if f.a == ADDR_SELECTED:
                    s.selected = False  # SND_NKE to 253 deselects
                replies.append(bytes([ACK]))
        elif c == 0x4B and f.ci is None:  # REQ_UD2 without FCB/FCV bits
            self.req_ud2 += 1
            for s in targets:
                r = self._req_ud2(s, f.c)
                if r is not None:
                    replies.append(r)
        else:
            return None  # a request this meter does not serve: silence
        return self._collide(replies)

    @staticmethod
    def _collide(replies: list[bytes]) -> bytes | None:
        if not replies:
            return None
        if len(replies) == 1 or all(r == bytes([ACK]) for r in replies):
            return replies[0]
        n = max(len(r) for r in replies)
        out = bytearray(n)
        for r in replies:
            for i, b in enumerate(r):
                out[i] |= b
        return bytes(out)

    def _draw(self) -> str | None:
        u = self._rng.random()
        acc = 0.0
        for kind, p in zip(MBUS_FAULT_KINDS, self._p, strict=True):
            acc += p
            if u < acc:
                return kind
        return None

    def _req_ud2(self, s: MbusSlaveSim, c: int) -> bytes | None:
        fcv, fcb = bool(c & C_FCV), int(bool(c & C_FCB))
        s.requests += 1
        if fcv and s.last_reply is not None and s.last_fcb == fcb:
            return s.last_reply  # the master repeats: so does the slave
        kind = self._draw() if s is self.slaves[0] else None
        if kind == "mbus_timeout":
            self.faults[kind] += 1
            return None
        if not s.pending:
            status = 0
            parts = 1
            if kind == "mbus_status_error":
                self.faults[kind] += 1
                status = STATUS_TEMPORARY_ERROR
            elif kind == "mbus_multi":
                self.faults[kind] += 1
                parts = 2
            s.pending = s.meter.telegrams(self.plant, status, parts)
        data = s.pending.pop(0)
        addr = s.address if s.address <= 250 else 0
        frame = long_frame(C_RSP_UD, addr, CI_RSP_LONG, data)
        s.last_fcb = fcb if fcv else None
        s.last_reply = frame
        if kind == "mbus_bad_checksum":
            self.faults[kind] += 1
            return frame[:-2] + bytes([frame[-2] ^ 0x5A, frame[-1]])
        if kind == "mbus_cut_short":
            self.faults[kind] += 1
            return frame[: len(frame) // 2]
        if kind == "mbus_noise":
            self.faults[kind] += 1
            return NOISE + frame
        return frame


def default_slaves(plant: Plant, seed: int, second: bool = False) -> list[MbusSlaveSim]:
    """The plant's heat meter at primary address 1 (fixed identification number), and
    with ``second`` another meter at address 2 whose number shares the first digits."""
    rng = random.Random(f"{seed}:mbus-identity")
    first = MeterImage("68135802", fabrication=rng.randrange(10**7, 10**8))
    out = [MbusSlaveSim(1, first)]
    if second:
        out.append(MbusSlaveSim(2, MeterImage("68139421", fabrication=rng.randrange(10**8))))
    return out
