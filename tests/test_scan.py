"""`dh-agent scan` against `dh-sim --mbus-pty --mbus-second-meter` (real processes, a real
pseudo-terminal): the primary sweep and the secondary wildcard tree search find both
meters; two meters sharing the first four digits make the search descend."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
METERS = {"68135802", "68139421"}  # simulator.mbus.default_slaves


@contextmanager
def mbus_sim(*extra: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [str(BIN / "dh-sim"), "--mbus-pty", "--mbus-second-meter", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["tcp"] is None and first["rtu"] is None
        yield str(first["mbus"])
    finally:
        proc.terminate()
        proc.wait(10)


def scan(*args: str) -> tuple[int, list[dict[str, object]], str]:
    out = subprocess.run(
        [str(BIN / "dh-agent"), "scan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.returncode, [json.loads(x) for x in out.stdout.splitlines()], out.stderr


def test_primary_sweep_finds_both_meters_with_their_addresses() -> None:
    with mbus_sim() as port:
        rc, found, err = scan("--port", port, "--baudrate", "2400", "--max-address", "4")
    assert rc == 0, err
    assert [(m["address"], m["id"]) for m in found] == [(1, "68135802"), (2, "68139421")]
    for m in found:
        assert m["manufacturer"] == "DHS" and m["version"] == 1 and m["medium"] == 4
    assert '"timeouts": ' in err


def test_secondary_search_finds_both_meters_by_descending_on_collisions() -> None:
    with mbus_sim() as port:
        rc, found, err = scan("--port", port, "--secondary", "--timeout-s", "0.1")
    assert rc == 0, err
    assert {str(m["id"]) for m in found} == METERS
    assert all(m["address"] is None for m in found)
    stats = json.loads(err.strip().splitlines()[-1].split("; ", 1)[1])
    assert stats["collisions"] >= 4  # 6813xxxx: four shared digits


def test_secondary_search_of_one_meter_needs_one_probe() -> None:
    proc = subprocess.Popen(
        [str(BIN / "dh-sim"), "--mbus-pty"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["mbus"]
        rc, found, err = scan("--port", port, "--secondary")
    finally:
        proc.terminate()
        proc.wait(10)
    assert rc == 0, err
    assert [m["id"] for m in found] == ["68135802"]
    stats = json.loads(err.strip().splitlines()[-1].split("; ", 1)[1])
    assert stats["probes"] == 2 and stats["collisions"] == 0  # select FFFFFFFF + REQ_UD2


def test_scan_of_a_missing_port_fails_clearly(tmp_path: Path) -> None:
    rc, found, err = scan("--port", str(tmp_path / "ttyUSB9"), "--max-address", "1")
    assert rc == 2 and found == []
    assert "cannot open" in err
