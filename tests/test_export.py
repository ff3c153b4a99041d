"""`dh-agent export` and `dh-agent status` over a store filled the way the agent fills it,
through the command line (in process, and once through the installed console script);
and the pure pieces (column order, cells, open alarms)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.config import load
from agent.export import COLUMNS, column_order, csv_cell, open_alarms
from agent.jws import Signer, envelope
from agent.store import SampleRow, SignBody, Store
from agent.timefmt import rfc3339
from simulator.layout import devices_toml

T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
SIGNER = Signer(Ed25519PrivateKey.generate())
BIN = Path(sys.executable).parent


def signer_for(stream: str) -> SignBody:
    def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
        return SIGNER.sign(envelope("test-site", stream, seq, prev, time.time(), body))

    return sign


def hm_record(i: int) -> dict[str, Any]:
    s = T0 + i * 3600
    return {
        "device": "hm1",
        "role": "heat_meter",
        "start": rfc3339(s),
        "end": rfc3339(s + 3600),
        "period_s": 3600,
        "samples": 3599 + i % 2,
        "flags": ["interpolated", "partial"] if i == 2 else [],
        "energy_start_kwh": 48000.0 + 25.5 * i,
        "energy_end_kwh": 48000.0 + 25.5 * (i + 1),
        "energy_kwh": 25.5,
        "volume_start_m3": 1800.0 + 0.5 * i,
        "volume_end_m3": 1800.0 + 0.5 * (i + 1),
        "volume_m3": 0.5,
        "flow_avg_m3h": 0.5,
        "flow_max_m3h": 0.75,
        "power_avg_kw": 25.5,
        "power_max_kw": 31.2,
        "supply_avg_c": 80.12,
        "return_avg_c": None if i == 1 else 40.0,
        "cooling_avg_c": 40.12,
        "flow_limit_m3h": 2.5,
        "limit_exceeded": i == 3,
    }


def dp_record(i: int) -> dict[str, Any]:
    s = T0 + i * 3600
    return {
        "device": "dp1",
        "role": "dp_sensor",
        "start": rfc3339(s),
        "end": rfc3339(s + 3600),
        "period_s": 3600,
        "samples": 3600,
        "flags": ["no_data", "interpolated"] if i == 0 else [],
        "dp_min_kpa": 60.5,
        "dp_avg_kpa": 75.25,
        "dp_max_kpa": 90.0,
        "vendor_extra": "x" if i == 4 else None,  # a key beyond the known columns
    }


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config file and a store at its storage path, filled like the agent does."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[site]\nid = "test-site"\nperiod_s = 3600\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\ntopic_prefix = "dh/v1"\n\n'
        '[keys]\nagent_key = "agent.key"\noperator_pubkeys = ["operator.pub"]\n\n'
        '[storage]\npath = "data/agent.db"\n\n[contract]\nflow_limit_m3h = 2.5\n'
        + devices_toml("127.0.0.1", 5020)
    )
    db = load(cfg).storage.path
    assert db == tmp_path / "data" / "agent.db"
    now = [T0 + 10 * 3600.0]
    st = Store(db, clock=lambda: now[0])
    st.next_boot()
    st.next_boot()
    sign = signer_for("interval")
    st.commit_intervals("hm1", "{}", [hm_record(i) for i in range(6)], "t/interval", sign)
    st.commit_intervals("dp1", "{}", [dp_record(i) for i in range(6)], "t/interval", sign)
    st.add_samples(
        [
            SampleRow("hm1", T0 + 6 * 3600 + k, 1.0, 2, True, True, {"flow_m3h": 0.5 + k}, [])
            for k in range(3)
        ]
        + [SampleRow("dp1", T0 + 6 * 3600.0, 1.0, 2, True, False, {}, ["meter_error"])]
    )
    ev = signer_for("event")
    for body in (
        {"kind": "supply_temp_low", "device": "hm1", "time": "2025-01-01T01:00:00.000Z",
         "value": 58.0, "threshold": 65},
        {"kind": "dp_low", "device": "dp1", "time": "2025-01-01T02:00:00.000Z", "value": 40.0},
        {"kind": "heat_outage_start", "device": "hm1", "time": "2025-01-01T03:00:00.000Z"},
        {"kind": "dp_low_end", "device": "dp1", "time": "2025-01-01T04:00:00.000Z"},
        {"kind": "flow_limit_exceeded", "device": "hm1", "time": "2025-01-01T04:00:00.000Z"},
    ):  # fmt: skip
        st.add_event(body, "t/event", ev)
    st.mark_sent([m.id for m in st.unsent(8)])  # 8 of 17 acknowledged, at `now`
    st.close()
    return cfg


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 0
    return capsys.readouterr().out


def test_csv_export_through_the_cli(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(
        ["export", "--config", str(site), "--from", "2025-01-01T01:00:00Z",
         "--to", "2025-01-01T05:00:00Z", "--format", "csv"],
        capsys,
    )  # fmt: skip
    rows = list(csv.reader(io.StringIO(out)))
    header, body = rows[0], rows[1:]
    # the union of both roles' keys: known columns in the fixed order, extras last
    known = [c for c in COLUMNS if c in hm_record(0) or c in dp_record(0)]
    assert header == [*known, "vendor_extra"]
    # records with start in [01:00, 05:00): hours 1..4, by device then start
    want = [dp_record(i) for i in range(1, 5)] + [hm_record(i) for i in range(1, 5)]
    assert len(body) == len(want)
    for row, rec in zip(body, want, strict=True):
        got = dict(zip(header, row, strict=True))
        for k in header:
            v = rec.get(k)
            if k == "flags":
                assert got[k] == ";".join(rec["flags"])
            elif v is None:
                assert got[k] == ""
            elif isinstance(v, bool):
                assert got[k] == ("true" if v else "false")
            elif isinstance(v, float):
                assert float(got[k]) == v
            else:
                assert got[k] == str(v)
    assert [r[header.index("flags")] for r in body][5] == "interpolated;partial"
    assert out.count("\n") == 9 and "\r" not in out


def test_json_export_through_the_cli(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(
        ["export", "--config", str(site), "--from", "2025-01-01T00:00:00Z",
         "--to", "2025-01-02T00:00:00Z", "--format", "json"],
        capsys,
    )  # fmt: skip
    got = json.loads(out)
    assert got == [dp_record(i) for i in range(6)] + [hm_record(i) for i in range(6)]
    assert len(out.strip().splitlines()) == 12 + 2  # one record per line inside the array
    empty = run_cli(
        ["export", "--config", str(site), "--from", "2024-01-01T00:00:00Z",
         "--to", "2024-02-01T00:00:00Z", "--format", "json"],
        capsys,
    )  # fmt: skip
    assert json.loads(empty) == []


def test_export_of_one_device(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--config", str(site), "--from", "2025-01-01T00:00:00Z",
            "--to", "2025-01-02T00:00:00Z", "--format", "json"]  # fmt: skip
    assert json.loads(run_cli([*args, "--device", "hm1"], capsys)) == [
        hm_record(i) for i in range(6)
    ]
    rows = list(
        csv.DictReader(io.StringIO(run_cli([*args[:-1], "csv", "--device", "dp1"], capsys)))
    )
    assert [r["device"] for r in rows] == ["dp1"] * 6
    assert json.loads(run_cli([*args, "--device", "nosuch"], capsys)) == []


def test_export_through_the_installed_command(site: Path) -> None:
    p = subprocess.run(
        [str(BIN / "dh-agent"), "export", "--config", str(site), "--from", "2025-01-01T05:00:00Z",
         "--to", "2025-01-01T06:00:00Z"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [(r["device"], r["start"]) for r in rows] == [
        ("dp1", "2025-01-01T05:00:00Z"),
        ("hm1", "2025-01-01T05:00:00Z"),
    ]
    assert rows[0]["vendor_extra"] == "" and rows[1]["energy_kwh"] == "25.5"


def test_status_through_the_cli(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(["status", "--config", str(site)], capsys)
    lines = out.splitlines()
    assert "boot: 2" in lines
    assert "last publish: 2025-01-01T10:00:00Z" in out
    # 12 intervals + 5 events stored, 8 acknowledged (the 8 oldest: intervals)
    assert "backlog: event 5, interval 4" in lines
    assert "interval records: 12" in lines
    hm = next(x for x in lines if x.strip().startswith("hm1:"))
    assert "2025-01-01T06:00:02Z" in hm and "flow_m3h=2.5" in hm and " ok" in hm
    dp = next(x for x in lines if x.strip().startswith("dp1:"))
    assert "FAILED" in dp and "meter_error" in dp
    assert "open alarms: 2" in lines
    alarm_lines = lines[lines.index("open alarms: 2") + 1 :]
    assert alarm_lines[0].split()[:2] == ["supply_temp_low", "hm1"]
    assert "value=58.0" in alarm_lines[0] and "threshold=65" in alarm_lines[0]
    assert alarm_lines[1].split()[:2] == ["heat_outage_start", "hm1"]
    assert "dp_low" not in out and "flow_limit_exceeded" not in out


def test_status_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[site]\nid = "s"\n[mqtt]\nurl = "mqtt://h"\n[keys]\nagent_key = "a.key"\n'
        '[storage]\npath = "agent.db"\n' + devices_toml("127.0.0.1", 5020)
    )
    Store(tmp_path / "agent.db").close()  # the agent made it (status never creates one)
    out = run_cli(["status", "--config", str(cfg)], capsys)
    assert out.splitlines() == [
        "boot: 0",
        "last publish: never",
        "backlog: nothing unsent",
        "interval records: 0",
        "last readings: none stored",
        "open alarms: none",
        "hm1: contract review: no complete hour recorded yet",
    ]


# --- pure pieces -----------------------------------------------------------------------------


def test_column_order_known_first_then_alphabetical() -> None:
    assert column_order(["zeta", "flags", "device", "alpha", "energy_kwh", "start"]) == [
        "device",
        "start",
        "flags",
        "energy_kwh",
        "alpha",
        "zeta",
    ]
    assert column_order([]) == []


def test_csv_cells() -> None:
    assert csv_cell(None) == ""
    assert csv_cell(True) == "true" and csv_cell(False) == "false"
    assert csv_cell(0.1) == "0.1" and csv_cell(48000.0) == "48000.0" and csv_cell(7) == 7
    assert csv_cell(float("nan")) == ""
    assert csv_cell(["no_data", "interpolated"]) == "no_data;interpolated"
    assert csv_cell([]) == ""
    assert csv_cell({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_open_alarms_pairs_starts_with_later_ends() -> None:
    evs: list[dict[str, Any]] = [
        {"kind": "device_offline", "device": "hm1", "time": "1"},
        {"kind": "cooling_low", "device": "hm1", "time": "2"},
        {"kind": "cooling_low", "device": "hm1", "basis": "billing_period", "time": "3"},
        {"kind": "device_online", "device": "hm1", "time": "4"},
        {"kind": "dp_low", "device": "dp1", "time": "5"},
        {"kind": "dp_low_end", "device": "dp2", "time": "6"},  # another device's end
        {"kind": "heat_outage_start", "device": "hm1", "time": "7"},
        {"kind": "heat_outage_end", "device": "hm1", "time": "8"},
        {"kind": "limiter_failsafe", "device": "hm1", "time": "9"},
        {"kind": "config_applied", "time": "10"},
        {"kind": "flow_limit_exceeded", "device": "hm1", "time": "11"},
        {"kind": "supply_temp_high", "device": "hm1", "time": "12"},
        {"kind": "supply_temp_high_end", "device": "hm1", "time": "13"},
        {"kind": "supply_temp_high", "device": "hm1", "time": "14"},  # again, still open
    ]
    got = [(a["kind"], a["device"], a["time"]) for a in open_alarms(evs)]
    assert got == [
        ("cooling_low", "hm1", "2"),
        ("dp_low", "dp1", "5"),
        ("limiter_failsafe", "hm1", "9"),
        ("supply_temp_high", "hm1", "14"),
    ]
    assert open_alarms([]) == []
