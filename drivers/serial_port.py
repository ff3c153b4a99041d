"""A serial port opened off the event loop and then used non-blocking from it: the part
the Modbus RTU master (``drivers.modbus.RtuBus``) and the M-Bus master
(``drivers.mbus_master.MbusLine``) share. Each subclass opens its port its own way
(``_open_sync``: parity, RS-485 mode ...) and does its own framing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
from typing import Any

from drivers.errors import ConnectError

log = logging.getLogger("dh.drivers")


class SerialPort:
    def __init__(self, path: str, char_s: float) -> None:
        self.path = path
        self.char_s = char_s  # one character's time on the line, s
        self.stale_bytes = 0  # bytes that arrived outside an exchange (late answers, noise)
        self.tx_bytes = 0
        self._serial: Any = None
        self._fd = -1
        self._last_activity = 0.0

    def _open_sync(self) -> Any:
        """Open the pyserial port (in a worker thread); non-blocking (timeout 0)."""
        raise NotImplementedError

    async def _ensure_open(self) -> None:
        if self._serial is not None:
            return
        try:
            ser = await asyncio.to_thread(self._open_sync)
        except (OSError, ValueError, termios.error) as e:  # SerialException is an OSError
            raise ConnectError(f"cannot open {self.path}: {e}") from e
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._last_activity = time.monotonic()

    def _drop(self) -> None:
        ser, self._serial, self._fd = self._serial, None, -1
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    def _drain(self) -> None:
        """Discard bytes that arrived outside an exchange (late answers, noise)."""
        while True:
            try:
                data = os.read(self._fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            self.stale_bytes += len(data)
            log.debug("%s: discarded %d stale bytes", self.path, len(data))

    async def _send(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            try:
                sent = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                await asyncio.sleep(self.char_s)
                continue
            view = view[sent:]
        self.tx_bytes += len(frame)
