"""A small Modbus RTU responder on a pseudo-terminal.

Own implementation (not pymodbus' serial server) so faults can be injected at frame
level: corrupted CRCs, no answer. Frames are split by function code and length, not by
the 3.5-character gap (a pty has no line timing); a partial frame older than
``FRAME_TIMEOUT_S`` is dropped, and a request with a bad CRC or an unknown layout
flushes the receive buffer (like a real slave, it is ignored without an answer).

The pty: ``os.openpty()``, slave side in raw mode, both fds kept open for the life of
the responder so ``/dev/pts/N`` stays valid while clients come and go. Clients open
the slave path with pyserial (any baud rate: a pty ignores it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty

from simulator.slaves import SlaveBank

FRAME_TIMEOUT_S = 0.5


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes, corrupt: bool = False) -> bytes:
    crc = crc16(frame)
    if corrupt:
        crc ^= 0xFFFF
    return frame + bytes([crc & 0xFF, crc >> 8])


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == frame[-2] | (frame[-1] << 8)


def request_length(buf: bytes | bytearray) -> int | None:
    """Length of the request frame at the start of ``buf``: None = need more bytes,
    -1 = not a request layout this responder knows."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    if fc == 23:
        return None if len(buf) < 11 else 13 + buf[10]
    return -1


class RtuResponder:
    """Answers RTU requests for a ``SlaveBank`` on the master side of a pty."""

    def __init__(self, bank: SlaveBank) -> None:
        self.bank = bank
        self.path: str | None = None
        self.rx_frames = 0
        self.rx_bad_crc = 0  # requests with a bad CRC (ignored)
        self.rx_garbage = 0
        self._master = -1
        self._slave = -1
        self._buf = bytearray()
        self._last_rx = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> str:
        """Create the pty and start answering; returns the slave path (/dev/pts/N)."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._on_readable)
        return self.path

    def close(self) -> None:
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
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        now = time.monotonic()
        if self._buf and now - self._last_rx > FRAME_TIMEOUT_S:
            self._buf.clear()  # a stale partial frame
        self._last_rx = now
        self._buf += data
        self._process()

    def _process(self) -> None:
        while True:
            n = request_length(self._buf)
            if n is None:
                return
            if n < 0:
                self.rx_garbage += 1
                self._buf.clear()
                return
            if len(self._buf) < n:
                return
            frame = bytes(self._buf[:n])
            del self._buf[:n]
            if not crc_ok(frame):
                self.rx_bad_crc += 1
                self._buf.clear()
                return
            self.rx_frames += 1
            reply = self.handle_frame(frame)
            if reply is not None:
                self._send(reply)

    def handle_frame(self, frame: bytes) -> bytes | None:
        """One CRC-checked request frame -> the reply frame (None: no answer)."""
        unit = frame[0]
        pdu = frame[1:-2]
        if unit == 0:  # broadcast: writes are applied, nobody answers
            if pdu[0] in (6, 16):
                for u in self.bank.profiles:
                    self.bank.handle_pdu(u, pdu, "rtu")
            return None
        resp, corrupt = self.bank.handle_pdu(unit, pdu, "rtu")
        if resp is None:
            return None
        return with_crc(bytes([unit]) + resp, corrupt)

    def _send(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except (BlockingIOError, InterruptedError):
            pass  # nobody reads the pty: the answer is lost, as on a dead bus
        except OSError:
            pass
