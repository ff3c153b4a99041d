"""The customer's register map (pure) and server bounds (in-process, loopback)."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from agent import customer_map as cm
from agent.config import ConfigError, parse_text
from agent.customer import CustomerServer

NOW = 1_764_650_000.0


def snap(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "v": 1, "site": "s", "written": NOW - 1, "clock_synced": True,
        "contract": {"flow_limit_m3h": 2.5, "power_limit_kw": None, "enforce": True},
        "devices": {
            "hm1": {"role": "heat_meter", "health": "ok", "ts": NOW - 2, "ok": True, "values": {
                "energy_kwh": {"value": 123456.7, "unit": "kWh", "quality": "good"},
                "volume_m3": {"value": 4321.123, "unit": "m3", "quality": "good"},
                "flow_m3h": {"value": 1.25, "unit": "m3/h", "quality": "good"},
                "power_kw": {"value": 55.5, "unit": "kW", "quality": "good"},
                "supply_c": {"value": 75.5, "unit": "C", "quality": "good"},
                "return_c": {"value": 185.0, "unit": "C", "quality": "implausible"},
            }},
            "dp1": {"role": "dp_sensor", "health": "offline", "ts": NOW - 30, "ok": False,
                    "values": {}},
        },
        "limiter": {"active": True, "enforce": True, "limiting": True, "failsafe": False,
                    "last_write_pct": 42.5, "allowed_flow_m3h": 2.4, "period_volume_m3": 1.0,
                    "budget_m3": 2.5, "period_start": NOW - 100},
        "last_records": {"hm1": {"start": "2025-12-02T04:00:00Z", "end": "2025-12-02T05:00:00Z",
                                 "energy_kwh": 50.0, "flags": ["interpolated", "limited"],
                                 "limit_exceeded": False}},
    }  # fmt: skip
    s.update(over)
    return s


def f32(img: dict[int, int], a: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", img[a], img[a + 1]))[0])


def u32(img: dict[int, int], a: int) -> int:
    return (img[a] << 16) | img[a + 1]


def test_image_from_a_snapshot() -> None:
    img = cm.build_image(snap(), NOW, "live", cm.Memory())
    assert img[0] == 1 and img[1] == 0 and img[2] == 1 and img[3] == 1
    assert (img[6], img[7], img[8], img[9]) == (0, 2, 1, 1)
    assert f32(img, 100) == pytest.approx(123456.7, abs=0.01)
    assert u32(img, 140) == 1234567 and u32(img, 142) == 4321123  # exact copies
    assert f32(img, 108) == 1.25 and (img[110], img[111]) == (cm.GOOD, 2)
    assert f32(img, 120) == 185.0 and img[122] == cm.IMPLAUSIBLE
    assert img[126] == cm.IMPLAUSIBLE  # cooling is as good as its worse temperature
    assert img[202] == cm.MISSING  # dp never read
    assert [img[300 + i] for i in range(4)] == [1, 1, 1, 0]
    assert f32(img, 304) == 2.5 and f32(img, 306) != f32(img, 306)  # NaN: no power limit
    assert f32(img, 308) == 42.5
    assert u32(img, 400) == 1764648000 and u32(img, 402) == 1764651600
    assert img[418] == (1 << 2) | (1 << 6) and img[420] == cm.GOOD


def test_offline_keeps_the_last_value_stale_and_missing() -> None:
    mem = cm.Memory()
    cm.build_image(snap(), NOW, "live", mem)
    s = snap()
    s["devices"]["hm1"].update(ok=False, values={}, health="offline")
    img = cm.build_image(s, NOW + 60, "live", mem)
    assert f32(img, 112) == 55.5 and img[114] == cm.OFFLINE and img[115] == 62
    img = cm.build_image(s, NOW + 60, "stale", mem)
    assert img[1] == 1 and img[114] == cm.STALE
    img = cm.build_image(None, NOW, "missing", cm.Memory())
    assert img[1] == 2 and img[2] == cm.AGE_UNKNOWN and img[114] == cm.MISSING


def test_answers() -> None:
    img = cm.build_image(snap(), NOW, "live", cm.Memory())
    r = cm.answer(img, bytes([4, 0, 100, 0, 4]))
    assert r[:2] == bytes([4, 8]) and struct.unpack(">f", r[2:6])[0] == pytest.approx(123456.7)
    assert cm.answer(img, bytes([3, 0, 0, 0, 10]))[:2] == bytes([3, 20])
    for fc in (1, 2, 5, 6, 15, 16, 22, 23, 43, 0x41):
        assert cm.answer(img, bytes([fc, 0, 0, 0, 1])) == bytes([fc | 0x80, 1])
    assert cm.answer(img, bytes([3, 0x03, 0xE8, 0, 1])) == bytes([0x83, 2])  # 1000
    assert cm.answer(img, bytes([3, 0, 126, 0, 4])) == bytes([0x83, 2])  # past the area
    assert cm.answer(img, bytes([3, 0, 10, 0, 1])) == bytes([0x83, 2])  # gap 10..99
    assert cm.answer(img, bytes([4, 0, 0, 0, 126])) == bytes([0x84, 3])
    assert cm.answer(img, bytes([4, 0, 0, 0, 0])) == bytes([0x84, 3])
    assert cm.answer(img, bytes([4, 0, 0])) == bytes([0x84, 3])


BASE = """
[site]
id = "s1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[keys]
agent_key = "agent.key"
[storage]
path = "agent.db"
[[devices]]
name = "hm1"
role = "heat_meter"
profile = "sim-heat-meter"
transport = "tcp"
port = 5020
"""


def test_config_tables() -> None:
    cfg = parse_text(BASE, Path("/tmp"))
    assert cfg.customer.enabled is False and cfg.plausibility.drift_pct == 5.0
    text = BASE + '[customer]\nenabled = true\nlisten = "192.168.10.5:502"\n'
    cfg = parse_text(text + '[plausibility]\ndrift_pct = 3\nflow_sensor = "supply"\n', Path("/tmp"))
    assert cfg.customer.listen == "192.168.10.5:502" and cfg.plausibility.drift_pct == 3.0
    assert cfg.plausibility.flow_sensor == "supply"
    with pytest.raises(ConfigError) as e:
        parse_text(BASE + '[customer]\nlisten = "0.0.0.0:502"\nmax_connections = 0\n'
                   '[plausibility]\ndrift_pct = "x"\nflow_sensor = "side"\nbogus = 1\n',
                   Path("/tmp"))  # fmt: skip
    p = e.value.problems
    assert any(x.startswith("customer.listen: ") for x in p)
    assert any(x.startswith("customer.max_connections: ") for x in p)
    assert "plausibility.drift_pct: must be a number" in p
    assert any(x.startswith("plausibility.flow_sensor: must be one of") for x in p)
    assert "plausibility.bogus: unknown key" in p


def _server(tmp: Path, **cust: Any) -> CustomerServer:
    live = tmp / "live.json"
    live.write_text(json.dumps(snap(written=time.time())))
    extra = "".join(f"{k} = {v}\n" for k, v in cust.items())
    cfg = parse_text(BASE + f'[live]\npath = "{live}"\nevery_s = 60\n[customer]\nenabled = true\n'
                     f'{extra}', tmp)  # fmt: skip
    return CustomerServer(cfg, "127.0.0.1:0")


async def _ask(port: int, pdu: bytes, tid: int = 7) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, 1) + pdu)
    await w.drain()
    head = await asyncio.wait_for(r.readexactly(7), 5)
    body = await r.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
    w.close()
    assert struct.unpack(">H", head[:2])[0] == tid
    return body


def test_server_bounds(tmp_path: Path) -> None:
    async def main() -> None:
        srv = _server(tmp_path, max_connections=2, max_requests_s=20, idle_timeout_s=1)
        _, port = await srv.start()
        try:
            assert (await _ask(port, bytes([4, 0, 0, 0, 2])))[:4] == bytes([4, 4, 0, 1])
            assert await _ask(port, bytes([6, 0, 0, 0, 1])) == bytes([0x86, 1])
            # a third connection is closed at once while two are held
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r3.read(10), 5) == b""
            w3.close()
            # silent clients are dropped after idle_timeout_s
            for r, _ in held:
                assert await asyncio.wait_for(r.read(10), 5) == b""
            # not Modbus TCP: dropped
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)
            w4.write(b"GET / HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(r4.read(10), 5) == b""
            # the rate bound: 60 requests at 20/s take about 2 s (burst 20)
            t0 = time.monotonic()
            await asyncio.gather(*[_ask(port, bytes([3, 0, 100, 0, 28]), i) for i in range(2)])
            r5, w5 = await asyncio.open_connection("127.0.0.1", port)
            for i in range(60):
                w5.write(struct.pack(">HHHB", i, 0, 6, 1) + bytes([3, 0, 0, 0, 1]))
                await w5.drain()
                await asyncio.wait_for(r5.readexactly(11), 10)
            assert time.monotonic() - t0 > 1.5
            w5.close()
        finally:
            await srv.close()

    asyncio.run(main())


def test_cli_disabled_exits_0_and_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "agent.toml"
    cfg.write_text(BASE)
    exe = Path(sys.executable).parent / "dh-agent"
    p = subprocess.run([str(exe), "customer", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0 and "disabled" in p.stdout
