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


def test_poll_once_shows_the_identity_of_an_mbus_meter(tmp_path: Path) -> None:
    with mbus_sim() as port:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(
            '[site]\nid = "s1"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
            '[keys]\nagent_key = "agent.key"\n[storage]\npath = "agent.db"\n'
            "[contract]\nenforce = false\n"
            f'[[devices]]\nname = "hm1"\nrole = "heat_meter"\ntransport = "mbus"\nport = "{port}"\n'
            "address = 1\ntimeout_s = 0.5\n"
            f'[[devices]]\nname = "hm2"\nrole = "heat_meter"\ntransport = "mbus"\nport = "{port}"\n'
            'secondary = "68139421"\ntimeout_s = 0.5\n'
        )
        out = subprocess.run(
            [str(BIN / "dh-agent"), "poll", "--config", str(cfg), "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    hm1, hm2 = (json.loads(x) for x in out.stdout.splitlines())
    assert hm1["identity"] == {
        "id": "68135802", "manufacturer": "DHS", "version": 1, "medium": 4, "status": 0
    }  # fmt: skip
    assert hm2["identity"]["id"] == "68139421"
    assert hm1["values"]["energy_kwh"]["unit"] == "kWh" and hm1["health"] == "ok"
    assert hm1["values"]["volume_m3"]["quality"] == "good"
    assert any(s["quantity"] == "date" and s["storage"] == 1 for s in hm1["stored"])
    assert hm1["counters"]["requests"] == 2  # SND_NKE + REQ_UD2
    assert hm2["counters"]["selects"] == 1
