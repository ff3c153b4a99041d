"""dh-sim as a subprocess: first JSON line, TCP and RTU readable by plain pymodbus
clients, truth file, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from simulator.cli import main

CMD = [sys.executable, "-m", "simulator.cli"]


def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str | None]]:
    proc = subprocess.Popen(
        [*CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)
    if not ready:
        proc.kill()
        pytest.fail("dh-sim printed no first line within 15 s")
    line = proc.stdout.readline()
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_dh_sim_tcp_rtu_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    proc, ep = start(
        "--tcp", "127.0.0.1:0", "--rtu-pty", "--scenario", "steady", "--seed", "2",
        "--truth", str(truth),
    )  # fmt: skip
    try:
        assert set(ep) == {"tcp", "rtu", "mbus"} and ep["mbus"] is None  # contract section 6
        assert isinstance(ep["tcp"], str) and isinstance(ep["rtu"], str)
        host, port = ep["tcp"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        c: Any = ModbusTcpClient(host, port=int(port), timeout=2.0, retries=1)
        assert c.connect()
        try:
            hm = c.read_holding_registers(800, count=11, device_id=1)
            assert not hm.isError()
            supply = hm.registers[0] / 100
            ret = hm.registers[10] / 100
            assert 60.0 < supply < 120.0 and 20.0 < ret < supply
            dp = c.read_input_registers(0, count=1, device_id=2)
            assert 4000 < dp.registers[0] < 20000
            assert not c.write_register(0, 700, device_id=3).isError()
        finally:
            c.close()
        s: Any = ModbusSerialClient(ep["rtu"], baudrate=9600, timeout=2.0, retries=1)
        assert s.connect()
        try:
            act = s.read_holding_registers(0, count=2, device_id=3)
            assert act.registers == [700, 60]  # the limit written over TCP
            e = s.read_holding_registers(100, count=5, device_id=1)
            assert e.registers[4] == 0  # energy unit kWh
        finally:
            s.close()
        time.sleep(1.2)
    finally:
        rc = stop(proc)
    assert rc == 0
    lines = [json.loads(x) for x in truth.read_text().splitlines()]
    assert len(lines) >= 1
    for ln in lines:
        for k in (
            "t", "energy_kwh", "volume_m3", "flow_m3h", "demand_flow_m3h", "supply_c",
            "return_c", "dp_kpa", "valve_limit_pct",
        ):  # fmt: skip
            assert isinstance(ln[k], float), k
    assert abs(lines[-1]["t"] - time.time()) < 30
    assert lines[-1]["valve_limit_pct"] == 70.0


def test_dh_sim_rtu_only_and_default() -> None:
    proc, ep = start("--rtu-pty")
    try:
        assert ep["tcp"] is None and ep["rtu"] is not None and os.path.exists(ep["rtu"])
    finally:
        assert stop(proc) == 0
    proc, ep = start()
    try:
        assert ep["rtu"] is None and ep["tcp"] is not None
        assert ep["tcp"].startswith("127.0.0.1:")
    finally:
        assert stop(proc) == 0


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad_scenario:
        main(["--scenario", "nope"])
    assert bad_scenario.value.code == 2  # argparse's usage error
    with pytest.raises(SystemExit) as bad_tcp:
        main(["--tcp", "no-port"])
    assert bad_tcp.value.code == 2
    assert main(["--watchdog-s", "0"]) == 2
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    assert "127.0.0.1:0" in capsys.readouterr().out
