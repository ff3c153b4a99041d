"""SimServer: the plant on a clock, served as Modbus TCP (pymodbus) and RTU (own pty
responder), with the truth file.

The plant follows the clock: a background task and every request advance it to
``clock.wall()``; each whole simulated second crossed appends one truth line (the
plant's exact values at that second plus ``faults``: the faults injected during the
second, by kind).

TCP uses pymodbus' ``ModbusTcpServer`` with a datastore context that reads and writes
through ``SlaveBank`` (so values are live and actuator writes reach the plant). A TCP
"timeout" is a request that is never answered (pymodbus' ``ignore_missing_devices``
path); unknown unit ids are not answered either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from drivers.clock_sys import SystemClock
from drivers.types import Clock
from simulator.mbus import MBUS_FAULT_KINDS, MbusResponder, default_slaves
from simulator.plant import Plant
from simulator.rtu import RtuResponder
from simulator.scenarios import ScenarioParams
from simulator.slaves import FAULT_KINDS, SlaveBank


class _BankContext(ModbusServerContext):
    """pymodbus datastore context backed by a SlaveBank (bypasses pymodbus' SimCore)."""

    def __init__(self, bank: SlaveBank) -> None:  # no super().__init__: no static blocks
        self.bank = bank
        self.old_simulator = True  # pymodbus 3.16: use this context as is
        self.simdevices = []
        self._devices = {}

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if func_code == 6:  # the echo pymodbus reads after a single-register write
            return [self.bank.image(device_id, "holding").get(address, 0)]
        if func_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        r = self.bank.read(device_id, func_code, address, count, "tcp")
        if r.timeout:
            raise NoSuchIdException(f"no answer (unit {device_id})")
        if r.exception is not None:
            return ExcCodes(r.exception)
        return list(r.words)

    async def async_setValues(
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        if func_code not in (6, 16):
            return ExcCodes.ILLEGAL_FUNCTION
        r = self.bank.write(device_id, address, [int(v) for v in values], "tcp")
        if r.timeout:
            raise NoSuchIdException(f"no answer (unit {device_id})")
        if r.exception is not None:
            return ExcCodes(r.exception)
        return None

    def device_ids(self) -> list[int]:
        return sorted(self.bank.profiles)


class SimServer:
    """Async context manager running the simulator; see the module doc."""

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        tcp: tuple[str, int] | None = ("127.0.0.1", 0),
        rtu_pty: bool = False,
        truth_path: str | None = None,
        step_s: float = 0.1,
        *,
        clock: Clock | None = None,
        params: ScenarioParams | None = None,
        watchdog_s: float | None = None,
        mbus_pty: bool = False,
        mbus_baud: int | None = None,
        mbus_second: bool = False,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.plant = Plant(scenario, seed, t0=self.clock.wall(), params=params)
        if watchdog_s is not None:
            self.plant.set_watchdog(watchdog_s)
        self.faults: Counter[str] = self.plant.faults
        self.bank = SlaveBank(self.plant, self.faults, sync=self.advance)
        self._tcp_bind = tcp
        self._rtu_wanted = rtu_pty
        self._truth_path = truth_path
        self._truth: IO[str] | None = None
        self.step_s = step_s
        self.tcp_address: tuple[str, int] | None = None
        self.rtu_path: str | None = None
        self.rtu: RtuResponder | None = None
        self._mbus_wanted = (mbus_pty, mbus_baud, mbus_second)
        self.mbus: MbusResponder | None = None
        self.mbus_path: str | None = None
        self._tcp_server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_truth = math.floor(self.plant.t) + 1
        self._faults_seen: Counter[str] = Counter()
        self.truth_lines = 0

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> SimServer:
        try:
            if self._truth_path is not None:
                self._truth = open(self._truth_path, "a", encoding="utf-8")  # noqa: SIM115
            if self._tcp_bind is not None:
                srv = ModbusTcpServer(
                    _BankContext(self.bank),
                    address=self._tcp_bind,
                    ignore_missing_devices=True,
                )
                await srv.serve_forever(background=True)
                self._tcp_server = srv
                listener = srv.transport
                if not isinstance(listener, asyncio.Server) or not listener.sockets:
                    raise RuntimeError("pymodbus TCP server has no listening socket")
                sock = listener.sockets[0]
                host, port = sock.getsockname()[:2]
                self.tcp_address = (str(host), int(port))
            if self._rtu_wanted:
                self.rtu = RtuResponder(self.bank)
                self.rtu_path = self.rtu.open()
            if self._mbus_wanted[0]:
                slaves = default_slaves(self.plant, self.plant.seed, self._mbus_wanted[2])
                self.mbus = MbusResponder(
                    self.plant,
                    slaves,
                    baud=self._mbus_wanted[1],
                    sync=self.advance,
                    faults=self.faults,
                    seed=self.plant.seed,
                )
                self.mbus_path = self.mbus.open()
            self._task = asyncio.create_task(self._run())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._tcp_server is not None:
            await self._tcp_server.shutdown()  # type: ignore[no-untyped-call]
            self._tcp_server = None
        if self.rtu is not None:
            self.rtu.close()
        if self.mbus is not None:
            self.mbus.close()
        if self._truth is not None:
            self._truth.close()
            self._truth = None

    async def _run(self) -> None:
        while True:
            self.advance()
            await asyncio.sleep(self.step_s)

    # --- time ----------------------------------------------------------------------

    def advance(self) -> None:
        """Step the plant to ``clock.wall()``, writing a truth line at each whole second."""
        now = self.clock.wall()
        while self._next_truth <= now:
            t = float(self._next_truth)
            if t > self.plant.t:
                self.plant.step(t - self.plant.t)
            self._emit_truth(t)
            self._next_truth += 1
        if now > self.plant.t:
            self.plant.step(now - self.plant.t)

    def _emit_truth(self, t: float) -> None:
        new = {k: self.faults[k] - self._faults_seen[k] for k in (*FAULT_KINDS, *MBUS_FAULT_KINDS)}
        self._faults_seen = Counter(self.faults)
        if self._truth is None:
            return
        line: dict[str, Any] = self.plant.truth()
        line["t"] = t
        line["faults"] = {k: n for k, n in new.items() if n}
        self._truth.write(json.dumps(line) + "\n")
        self._truth.flush()
        self.truth_lines += 1

    def endpoints(self) -> dict[str, str | None]:
        """The first stdout line of dh-sim: {"tcp": "HOST:PORT" | None, "rtu": path | None,
        "mbus": path | None}."""
        tcp = f"{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else None
        return {"tcp": tcp, "rtu": self.rtu_path, "mbus": self.mbus_path}
