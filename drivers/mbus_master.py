"""Wired M-Bus master (EN 13757-2 link layer) over pyserial: bytes on the line, frames out.

``MbusLine`` is one physical line (a serial port through a level converter, 8E1). It owns
an ``asyncio.Lock`` that the caller holds for a whole exchange (a select and its request
belong together), so several meters on one line never interleave. ``exchange`` sends one
frame and waits for one reply: the single character E5 or a short/long frame. Nothing
blocks the event loop: the port is opened in a thread, then read through the loop's
reader on a non-blocking fd (as ``drivers.modbus.RtuBus`` does).

Reply timing: the reply must start within the standard reply timeout (330 bit times +
50 ms, about 190 ms at 2400 baud) after the request's last byte has left; after that
the frame ends when it is complete, or when the line stays silent for another timeout.
Bytes that cannot start a frame are skipped (counted as ``garbage_bytes``) and the reader
resynchronises on the next start byte; bytes left over when nothing valid arrived make a
``GarbledReply`` (two slaves answering at once look like that: a collision).

``MbusSlave`` is the link state of one meter: the FCB toggle (EN 13757-2: FCV set, FCB
toggled after every answered request; a repeated request keeps its FCB so the slave
repeats its last telegram), the SND_NKE reset that is sent only at the start and after
a failed poll (never before every read: one request per poll in steady state for a
single-telegram meter), secondary selection (SND_UD CI 0x52 to 253, skipped while the
line's last select was this meter's), and multi-telegram replies (read until a
telegram without DIF 0x1F "more records follow"). Every request attempt is counted;
failed attempts are retried ``retries`` times (lock released in between, so another
meter on the line is served meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Literal

from drivers.errors import ConnectError, TransportError
from drivers.mbus_frame import (
    ADDR_SELECTED,
    Ack,
    Frame,
    MbusFrameError,
    frame_length,
    parse_frame,
    req_ud2,
    select_secondary,
    snd_nke,
)
from drivers.serial_port import SerialPort

log = logging.getLogger(__name__)

BITS_PER_CHAR = 11  # start + 8 data + even parity + stop
MAX_TELEGRAMS = 16  # a multi-telegram reply longer than this is an error (runaway slave)
BAUDRATES = (300, 2400, 9600)

Want = Literal["ack", "frame"]
TraceFn = Callable[[str, bytes, float], None]


def reply_timeout_s(baudrate: int) -> float:
    """The standard reply timeout: 330 bit times + 50 ms."""
    return 330.0 / baudrate + 0.05


def line_time_s(nbytes: int, baudrate: int) -> float:
    """How long ``nbytes`` take on the line (11 bits a character)."""
    return nbytes * BITS_PER_CHAR / baudrate


# --- errors (the counter each is counted under is ``kind``) -------------------------------


class MbusTimeout(TransportError):
    kind = "timeouts"


class MbusChecksumError(TransportError):
    kind = "checksum_errors"


class MbusBadFrame(TransportError):
    """A frame cut short, with a bad start/stop/length, or not the expected answer."""

    kind = "bad_frames"


class GarbledReply(MbusBadFrame):
    """Bytes arrived but no valid frame among them (noise, or slaves colliding)."""


# --- the line -----------------------------------------------------------------------------


class MbusLine(SerialPort):
    """One M-Bus line on a serial port (8E1); see the module doc."""

    def __init__(self, path: str, baudrate: int = 2400, trace: TraceFn | None = None) -> None:
        super().__init__(path, BITS_PER_CHAR / baudrate)
        self.lock = asyncio.Lock()
        self.baudrate = baudrate
        self.trace = trace  # ("tx"|"rx", bytes, monotonic): diagnostics, tests, bench
        self.garbage_bytes = 0  # bytes skipped while resynchronising
        self.selected: str | None = None  # the secondary address selected last on this line
        self.rx_bytes = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return ("rtu", self.path)  # the same namespace as RTU lines: one port, one owner

    def settings(self) -> tuple[int, str, int, bool]:
        return (self.baudrate, "E", 1, False)

    def _open_sync(self) -> Any:
        import serial

        ser = serial.Serial()
        ser.port = self.path
        ser.baudrate = self.baudrate
        # a pseudo-terminal (the simulator) carries no parity: Linux clears PARENB on a pty
        # and then refuses it on the next open (EINVAL); a real port is 8E1
        pty = self.path.startswith("/dev/pts/")
        ser.parity = serial.PARITY_NONE if pty else serial.PARITY_EVEN
        ser.stopbits = serial.STOPBITS_ONE
        ser.bytesize = serial.EIGHTBITS
        ser.timeout = 0
        ser.write_timeout = 0
        ser.open()
        return ser

    def _drop(self) -> None:
        self.selected = None
        super()._drop()

    def _scan(self, buf: bytearray) -> int | None:
        """Skip bytes that cannot start a frame; the length of the frame at buf[0]."""
        while buf:
            try:
                return frame_length(bytes(buf[:3]))
            except MbusFrameError:
                del buf[0]
                self.garbage_bytes += 1
        return None

    async def exchange(self, frame: bytes, timeout: float, want: Want | None) -> Frame | Ack | None:
        """Send one frame and read one reply (``want`` None: nothing is expected, e.g. a
        broadcast). The caller holds ``self.lock``. Raises a ``TransportError``."""
        if not self.lock.locked():
            raise RuntimeError("MbusLine.exchange needs the line lock")
        await self._ensure_open()
        gap = self._last_activity + 33 / self.baudrate - time.monotonic()
        if gap > 0:  # 33 bit times of idle line between frames
            await asyncio.sleep(gap)
        buf = bytearray()
        raw = [0]
        try:
            self._drain()
            await self._send(frame)
            now = time.monotonic()
            if self.trace is not None:
                self.trace("tx", frame, now)
            if want is None:
                await asyncio.sleep(len(frame) * self.char_s)
                return None
            await self._receive(buf, raw, now + len(frame) * self.char_s + timeout, timeout)
        except OSError as e:
            self._drop()
            raise ConnectError(f"{self.path}: {e}") from e
        finally:
            self._last_activity = time.monotonic()
        self.rx_bytes += raw[0]
        if self.trace is not None and raw[0]:
            self.trace("rx", bytes(buf), self._last_activity)
        return self._judge(buf, raw[0], want)

    async def _receive(
        self, buf: bytearray, raw: list[int], deadline: float, timeout: float
    ) -> None:
        """Read until one frame is complete, or the reply does not start by ``deadline``,
        or the line is silent for ``timeout`` after a byte."""
        loop = asyncio.get_running_loop()
        got = asyncio.Event()

        def on_readable() -> None:
            try:
                data = os.read(self._fd, 512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                got.set()
                return
            buf.extend(data)
            raw[0] += len(data)
            got.set()

        seen = 0
        loop.add_reader(self._fd, on_readable)
        try:
            while True:
                n = self._scan(buf)
                if n is not None and len(buf) >= n:
                    return
                if raw[0] > seen:  # bytes keep coming: the silence counts from now
                    seen = raw[0]
                    deadline = max(deadline, time.monotonic() + timeout)
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                got.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got.wait(), left)
        finally:
            loop.remove_reader(self._fd)

    def _judge(self, buf: bytearray, raw: int, want: Want) -> Frame | Ack:
        n = self._scan(buf)
        if not buf:
            if raw:
                raise GarbledReply(f"{self.path}: only garbage in the reply ({raw} bytes)")
            raise MbusTimeout(f"{self.path}: no answer")
        if n is None or len(buf) < n:
            raise MbusBadFrame(f"{self.path}: reply cut short ({len(buf)} of {n} bytes)")
        try:
            reply = parse_frame(bytes(buf[:n]))
        except MbusFrameError as e:
            if "checksum" in str(e):
                raise MbusChecksumError(f"{self.path}: {e}") from e
            raise MbusBadFrame(f"{self.path}: {e}") from e
        if len(buf) > n:  # more after the frame: a second talker on the line
            raise GarbledReply(f"{self.path}: {len(buf) - n} bytes after the reply")
        if want == "ack" and not isinstance(reply, Ack):
            raise MbusBadFrame(f"{self.path}: expected E5, got a frame")
        if want == "frame" and not isinstance(reply, Frame):
            raise MbusBadFrame(f"{self.path}: expected a frame, got E5")
        return reply

    async def close(self) -> None:
        async with self.lock:
            self._drop()


# --- one slave ---------------------------------------------------------------------------

COUNTER_NAMES = (
    "polls",
    "polls_failed",
    "requests",
    "ok",
    "timeouts",
    "checksum_errors",
    "bad_frames",
    "connect_errors",
    "retries",
    "resets",
    "selects",
    "telegrams",
    "implausible",
)


class MbusSlave:
    """The link state of one meter on a line (primary ``address`` 0..250, or
    ``secondary``: 8 digits, F = wildcard); see the module doc."""

    def __init__(
        self,
        line: MbusLine,
        address: int | None = None,
        secondary: str | None = None,
        *,
        timeout_s: float | None = None,
        retries: int = 2,
        counters: dict[str, int] | None = None,
    ) -> None:
        if (address is None) == (secondary is None):
            raise ValueError("give either a primary address or a secondary address")
        self.line = line
        self.address = address
        self.secondary = secondary.upper() if secondary is not None else None
        self.timeout_s = timeout_s if timeout_s is not None else reply_timeout_s(line.baudrate)
        self.retries = retries
        self.counters = counters if counters is not None else dict.fromkeys(COUNTER_NAMES, 0)
        for k in COUNTER_NAMES:
            self.counters.setdefault(k, 0)
        self.fcb = True
        self.need_reset = True
        self.last_error: str | None = None

    @property
    def link_address(self) -> int:
        return self.address if self.address is not None else ADDR_SELECTED

    def _count(self, e: TransportError) -> None:
        self.counters[e.kind] = self.counters.get(e.kind, 0) + 1
        self.last_error = str(e)
        if e.kind in ("checksum_errors", "bad_frames"):
            log.warning("M-Bus %s: bad frame skipped: %s", self.label, e)
        else:
            log.debug("M-Bus %s: %s", self.label, e)

    @property
    def label(self) -> str:
        return f"{self.line.path}@{self.address if self.address is not None else self.secondary}"

    async def _request(self, frame: bytes, want: Want) -> Frame | Ack:
        """One attempt: hold the line, select first when addressing by secondary."""
        c = self.counters
        line = self.line
        async with line.lock:
            if self.secondary is not None and line.selected != self.secondary:
                line.selected = None
                c["requests"] += 1
                c["selects"] += 1
                await line.exchange(select_secondary(self.secondary), self.timeout_s, "ack")
                c["ok"] += 1
                line.selected = self.secondary
            c["requests"] += 1
            try:
                reply = await line.exchange(frame, self.timeout_s, want)
            except TransportError:
                if self.secondary is not None:
                    line.selected = None  # not sure any more who listens at 253
                raise
        c["ok"] += 1
        assert reply is not None
        return reply

    async def _attempts(self, make: Callable[[], bytes], want: Want) -> Frame | Ack:
        attempt = 0
        while True:
            try:
                return await self._request(make(), want)
            except TransportError as e:
                self._count(e)
                if attempt >= self.retries:
                    raise
                attempt += 1
                self.counters["retries"] += 1
                await asyncio.sleep(min(0.5, 0.05 * 2 ** (attempt - 1)))

    async def reset(self) -> None:
        """SND_NKE: the slave resets its link (FCB); the next REQ_UD2 carries FCB set.
        A meter addressed by secondary address is not sent SND_NKE (to address 253 it
        deselects the meter): a fresh select starts its link instead."""
        if self.secondary is not None:
            if self.line.selected == self.secondary:
                self.line.selected = None
        else:
            self.counters["resets"] += 1
            await self._attempts(lambda: snd_nke(self.link_address), "ack")
        self.fcb = True
        self.need_reset = False

    async def request_telegram(self) -> Frame:
        """One REQ_UD2 (retried with the same FCB, so a slave repeats its telegram);
        the FCB toggles after an answer."""
        reply = await self._attempts(lambda: req_ud2(self.link_address, self.fcb), "frame")
        assert isinstance(reply, Frame)
        if not reply.is_rsp_ud() or reply.ci is None:
            raise MbusBadFrame(f"{self.label}: not an RSP_UD (C=0x{reply.c:02X})")
        self.fcb = not self.fcb
        self.counters["telegrams"] += 1
        return reply

    async def read_frames(self, more: Callable[[Frame], bool]) -> list[Frame]:
        """All telegrams of one reading: ``more(frame)`` says whether another follows
        (DIF 0x1F). SND_NKE first only when needed (start, after a failure). Raises
        the last ``TransportError`` after the retries; the next call resets the link."""
        try:
            if self.need_reset:
                await self.reset()
            frames = [await self.request_telegram()]
            while more(frames[-1]):
                if len(frames) >= MAX_TELEGRAMS:
                    raise MbusBadFrame(f"{self.label}: more than {MAX_TELEGRAMS} telegrams")
                frames.append(await self.request_telegram())
            return frames
        except TransportError:
            self.need_reset = True
            raise
