"""Modbus transports: one request/response at a time on one bus, bytes in, words out.

A ``Bus`` is one physical line (an RS-485 serial port) or one TCP connection
(host:port). It owns an ``asyncio.Lock``: every request holds it from the first byte
sent to the last byte received (or the timeout), so several devices on one RS-485 line
never interleave requests. Retries, health and decoding live in ``drivers.device``;
a bus makes exactly one attempt per call and raises a ``TransportError`` subclass that
names the counter it belongs to (``kind``).

RTU is implemented here directly on pyserial, not with pymodbus' serial client:
pymodbus 3.16's ``FramerRTU`` drops a frame whose CRC does not match with a debug log
line ("Frame CRC check failed, possible garbage") and the request then simply times
out, so a CRC error cannot be told from a timeout and cannot be counted. The own RTU
client frames by function code (exception 5 bytes, FC3/4 5 + byte count, FC6/16 8),
checks the CRC-16, keeps the 3.5-character inter-frame silence, discards stale bytes
before each request and never blocks the event loop (non-blocking fd + loop reader;
only opening the port runs in a thread). The kernel RS-485 mode (TIOCSRS485, pyserial
``rs485_mode``) is switched on when configured; a port that refuses it is an error.

TCP uses pymodbus' ``AsyncModbusTcpClient`` (3.16 API: ``device_id=``) with its own
retries off (``retries=0``) and auto-reconnect off (``reconnect_delay=0``): the driver
retries, so every attempt is counted, and reconnects on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from drivers.errors import ConnectError, TransportError
from drivers.serial_port import SerialPort

if TYPE_CHECKING:  # pymodbus is imported by the first TcpBus: RTU-only gateways never load it
    from pymodbus.client import AsyncModbusTcpClient

log = logging.getLogger(__name__)

Function = Literal["holding", "input"]
FC_READ = {"holding": 3, "input": 4}
MAX_READ = 125
MAX_WRITE = 123

# exception codes after which a retry cannot help (the request itself is wrong)
PERMANENT_EXCEPTIONS = frozenset({1, 2, 3})
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


# --- errors ----------------------------------------------------------------------------


class ModbusTimeout(TransportError):
    kind = "timeouts"


class CrcError(TransportError):
    kind = "crc_errors"


class FrameError(TransportError):
    """A complete frame with a good CRC that is not the answer to the request
    (other unit, other function, wrong length), or a frame cut short."""

    kind = "bad_frames"


class ExceptionResponse(TransportError):
    kind = "exceptions"

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception response {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.code not in PERMANENT_EXCEPTIONS


# --- CRC and RTU framing (pure) ----------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """Unit + PDU + CRC (low byte first)."""
    body = bytes([unit]) + pdu
    crc = crc16(body)
    return body + bytes([crc & 0xFF, crc >> 8])


def response_length(buf: bytes | bytearray) -> int | None:
    """Length of the RTU response frame at the start of ``buf`` from its function code:
    None = need more bytes, -1 = a function code this client never asks for."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in (3, 4):
        return None if len(buf) < 3 else 5 + buf[2]
    if fc in (6, 16):
        return 8
    return -1


def read_pdu(function: Function, address: int, count: int) -> bytes:
    return struct.pack(">BHH", FC_READ[function], address, count)


def write_pdu(address: int, words: list[int]) -> bytes:
    """FC6 for one register, FC16 for more."""
    if len(words) == 1:
        return struct.pack(">BHH", 6, address, words[0] & 0xFFFF)
    return struct.pack(f">BHHB{len(words)}H", 16, address, len(words), 2 * len(words), *words)


def check_response(unit: int, request: bytes, frame: bytes) -> bytes:
    """Validate one complete RTU response frame against its request PDU; returns the
    response PDU or raises CrcError / FrameError / ExceptionResponse."""
    if len(frame) < 4 or crc16(frame[:-2]) != frame[-2] | (frame[-1] << 8):
        raise CrcError(f"bad CRC in {frame.hex()}")
    pdu = frame[1:-2]
    if frame[0] != unit:
        raise FrameError(f"answer from unit {frame[0]}, asked unit {unit}")
    fc = request[0]
    if pdu[0] == fc | 0x80:
        raise ExceptionResponse(pdu[1])
    if pdu[0] != fc:
        raise FrameError(f"answer function {pdu[0]}, asked {fc}")
    if fc in (3, 4):
        count = struct.unpack(">H", request[3:5])[0]
        if pdu[1] != 2 * count:
            raise FrameError(f"answer has {pdu[1]} bytes, asked {2 * count}")
    elif fc == 6 and pdu != request:
        raise FrameError("write echo differs from the request")
    elif fc == 16 and pdu[1:5] != request[1:5]:
        raise FrameError("write answer names other registers")
    return pdu


def words_of(pdu: bytes) -> list[int]:
    """Register words of an FC3/FC4 response PDU."""
    n = pdu[1] // 2
    return list(struct.unpack(f">{n}H", pdu[2 : 2 + 2 * n]))


# --- buses -----------------------------------------------------------------------------


class Bus(ABC):
    """One line / connection; one request at a time (``lock``)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    @property
    @abstractmethod
    def key(self) -> tuple[Any, ...]:
        """Identity for sharing: ("rtu", path) or ("tcp", host, port)."""

    @abstractmethod
    async def read(
        self, unit: int, function: Function, address: int, count: int, timeout: float
    ) -> list[int]:
        """One FC3/FC4 read; raises TransportError."""

    @abstractmethod
    async def write(self, unit: int, address: int, words: list[int], timeout: float) -> None:
        """One FC6 (one word) or FC16 write; raises TransportError."""

    @abstractmethod
    async def close(self) -> None: ...


TraceFn = Callable[[str, bytes, float], None]


class RtuBus(SerialPort, Bus):
    """Modbus RTU master on a serial port (pyserial), see the module doc."""

    def __init__(
        self,
        path: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        rs485: bool = False,
        trace: TraceFn | None = None,
    ) -> None:
        bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
        Bus.__init__(self)
        SerialPort.__init__(self, path, bits / baudrate)
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.rs485 = rs485
        self.trace = trace  # ("tx"|"rx", bytes, monotonic) for diagnostics and tests
        # 3.5 character times; fixed 1.75 ms above 19200 baud (Modbus over serial line 2.5.1.1)
        self.silence_s = 3.5 * self.char_s if baudrate <= 19200 else 0.00175

    @property
    def key(self) -> tuple[Any, ...]:
        return ("rtu", self.path)

    def settings(self) -> tuple[int, str, int, bool]:
        return (self.baudrate, self.parity, self.stopbits, self.rs485)

    def _open_sync(self) -> Any:
        import serial
        import serial.rs485

        ser = serial.Serial()
        ser.port = self.path
        ser.baudrate = self.baudrate
        ser.parity = self.parity
        ser.stopbits = self.stopbits
        ser.bytesize = 8
        ser.timeout = 0
        ser.write_timeout = 0
        if self.rs485:
            # kernel-driven direction control (TIOCSRS485): RTS on while sending
            ser.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=True, rts_level_for_rx=False
            )
        ser.open()
        return ser

    async def _transact(self, unit: int, pdu: bytes, timeout: float) -> bytes:
        async with self.lock:
            await self._ensure_open()
            loop = asyncio.get_running_loop()
            gap = self._last_activity + self.silence_s - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            frame = rtu_frame(unit, pdu)
            buf = bytearray()
            got = asyncio.Event()
            try:
                self._drain()
                await self._send(frame)
                if self.trace is not None:
                    self.trace("tx", frame, time.monotonic())
                deadline = time.monotonic() + len(frame) * self.char_s + timeout

                def on_readable() -> None:
                    try:
                        data = os.read(self._fd, 512)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError:
                        data = b""
                        got.set()
                        return
                    buf.extend(data)
                    got.set()

                loop.add_reader(self._fd, on_readable)
                try:
                    while True:
                        n = response_length(buf)
                        if n is not None and (n < 0 or len(buf) >= n):
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        got.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(got.wait(), left)
                finally:
                    loop.remove_reader(self._fd)
            except OSError as e:
                self._drop()
                raise ConnectError(f"{self.path}: {e}") from e
            finally:
                self._last_activity = time.monotonic()
            if buf and self.trace is not None:
                self.trace("rx", bytes(buf), self._last_activity)
            n = response_length(buf)
            if not buf:
                raise ModbusTimeout(f"no answer from unit {unit} on {self.path}")
            if n is None or n < 0:
                raise FrameError(f"unparseable answer {bytes(buf).hex()}")
            if len(buf) < n:
                raise FrameError(f"incomplete answer ({len(buf)} of {n} bytes)")
            # bytes beyond the frame are left for _drain (counted as stale)
            return check_response(unit, pdu, bytes(buf[:n]))

    async def read(
        self, unit: int, function: Function, address: int, count: int, timeout: float
    ) -> list[int]:
        if not 1 <= count <= MAX_READ:
            raise ValueError(f"read of {count} registers")
        pdu = await self._transact(unit, read_pdu(function, address, count), timeout)
        return words_of(pdu)

    async def write(self, unit: int, address: int, words: list[int], timeout: float) -> None:
        if not 1 <= len(words) <= MAX_WRITE:
            raise ValueError(f"write of {len(words)} registers")
        await self._transact(unit, write_pdu(address, words), timeout)

    async def close(self) -> None:
        async with self.lock:
            self._drop()


class TcpBus(Bus):
    """Modbus TCP through pymodbus' AsyncModbusTcpClient, one connection per host:port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        from pymodbus.client import AsyncModbusTcpClient
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        self._errors = (ConnectionException, ModbusIOException, ModbusException)
        self.host = host
        self.port = port
        self.client: AsyncModbusTcpClient = AsyncModbusTcpClient(
            host, port=port, timeout=1.0, retries=0, reconnect_delay=0
        )
        self._params = self.client.ctx.comm_params

    @property
    def key(self) -> tuple[Any, ...]:
        return ("tcp", self.host, self.port)

    async def _ensure_connected(self, timeout: float) -> None:
        if self.client.connected:
            return
        self._params.timeout_connect = timeout
        ok = await self.client.connect()
        if not ok:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}")

    def _transport_error(self, e: Exception) -> Exception:
        """The TransportError for what pymodbus raised (``e`` itself when it is none of
        pymodbus' errors nor an OSError)."""
        connection_exc, io_exc, modbus_exc = self._errors
        if isinstance(e, connection_exc):
            return ConnectError(f"{self.host}:{self.port}: {e}")
        if isinstance(e, io_exc):
            if "No response" in str(e):
                return ModbusTimeout(f"no answer from {self.host}:{self.port}")
            return FrameError(str(e))
        if isinstance(e, modbus_exc):
            return FrameError(str(e))
        if isinstance(e, OSError):
            return ConnectError(f"{self.host}:{self.port}: {e}")
        return e

    async def _execute(self, call: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        # the lock taken and released by hand: ``async with`` costs one more coroutine
        # per request on the polling hot path
        lock = self.lock
        await lock.acquire()
        try:
            if not self.client.connected:
                await self._ensure_connected(timeout)
            self._params.timeout_connect = timeout  # the response timeout of this request
            return await self._checked(call)
        finally:
            lock.release()

    async def _checked(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """The response of ``fn(*args, **kw)``; TransportError for a failure,
        ExceptionResponse for an exception response."""
        try:
            rr = await fn(*args, **kw)
        except Exception as e:
            err = self._transport_error(e)
            if err is e:
                raise
            raise err from e
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise ExceptionResponse(int(code))
        return rr

    async def read(
        self, unit: int, function: Function, address: int, count: int, timeout: float
    ) -> list[int]:
        if not 1 <= count <= MAX_READ:
            raise ValueError(f"read of {count} registers")
        c = self.client
        fn = c.read_holding_registers if function == "holding" else c.read_input_registers
        # ``_execute`` inline (the polling hot path: no closure, one coroutine less)
        lock = self.lock
        await lock.acquire()
        try:
            if not c.connected:
                await self._ensure_connected(timeout)
            self._params.timeout_connect = timeout  # the response timeout of this request
            rr = await self._checked(fn, address, count=count, device_id=unit)
        finally:
            lock.release()
        words: list[int] = rr.registers
        if type(words) is not list:
            words = list(words)
        if len(words) != count:
            raise FrameError(f"answer has {len(words)} registers, asked {count}")
        return words

    async def write(self, unit: int, address: int, words: list[int], timeout: float) -> None:
        if not 1 <= len(words) <= MAX_WRITE:
            raise ValueError(f"write of {len(words)} registers")
        c = self.client
        if len(words) == 1:
            await self._execute(
                lambda: c.write_register(address, words[0], device_id=unit), timeout
            )
        else:
            await self._execute(lambda: c.write_registers(address, words, device_id=unit), timeout)

    async def close(self) -> None:
        self.client.close()
