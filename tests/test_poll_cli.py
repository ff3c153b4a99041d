"""`dh-agent poll --once` against the real simulator over Modbus TCP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulator.layout import devices_toml
from tests.support.rig import simulator

BIN = Path(sys.executable).parent


def config_text(port: int) -> str:
    return (
        '[site]\nid = "first-look"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n'
        '[keys]\nagent_key = "agent.key"\n\n[storage]\npath = "agent.db"\n\n'
        "[contract]\nenforce = false\n" + devices_toml("127.0.0.1", port)
    )


def test_poll_once_prints_one_object_per_device(tmp_path: Path) -> None:
    with simulator(tmp_path) as sim:
        port = sim.port
        cfg = tmp_path / "agent.toml"
        cfg.write_text(config_text(port))
        out = subprocess.run(
            [str(BIN / "dh-agent"), "poll", "--config", str(cfg), "--once"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        objs = [json.loads(line) for line in out.stdout.splitlines()]
        assert [o["name"] for o in objs] == ["hm1", "dp1", "act1"]
        hm = objs[0]
        assert hm["role"] == "heat_meter" and hm["health"] == "ok"
        assert hm["values"]["energy_kwh"]["unit"] == "kWh"
        assert hm["values"]["supply_c"]["quality"] == "good"
        assert 40 < hm["values"]["supply_c"]["value"] < 130
        assert 0 < objs[1]["values"]["dp_kpa"]["value"] < 400
        assert objs[2]["values"]["limit_pct"]["value"] == 100.0
