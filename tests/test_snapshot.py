"""The live snapshot (agent/snapshot.py): pure builder, telemetry from it, atomic file,
tolerant reader, and the [live] config table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agent import snapshot as snap
from agent.config import ConfigError, parse_text
from agent.limiter import LimiterParams, LimiterState, MeterInput, step
from drivers.types import Quality, Reading, Value
from tests.support.configs import GOOD

T0 = 1_764_648_000.0  # a whole hour


def reading(ts: float, **vals: float) -> Reading:
    return Reading(
        device="hm1",
        role="heat_meter",
        ts=ts,
        mono=ts - T0,
        synced=True,
        ok=True,
        values={k: Value(v, "m3/h" if k == "flow_m3h" else "kWh") for k, v in vals.items()},
    )


def params(limit: float | None = 2.5) -> LimiterParams:
    return LimiterParams(
        flow_limit_m3h=limit, power_limit_kw=None, period_s=3600, enforce=True, refresh_s=20.0
    )


def build(**over: object) -> dict[str, object]:
    args: dict[str, object] = {
        "site": "sub-1",
        "wall": T0 + 100.5,
        "mono": 42.0,
        "clock_synced": True,
        "boot": 7,
        "pid": 1234,
        "config_version": 3,
        "period_s": 3600,
        "contract": {"flow_limit_m3h": 2.5, "power_limit_kw": None, "enforce": True},
        "delivery": {"supply_min_c": 65.0, "dp_min_kpa": 60.0},
        "devices": [
            snap.DeviceView(
                "hm1",
                "heat_meter",
                "tcp",
                "sim-heat-meter",
                "ok",
                reading(T0 + 100, energy_kwh=1234.5, flow_m3h=2.0),
                {"polls": 10, "polls_failed": 1},
                None,
            ),
            snap.DeviceView("dp1", "dp_sensor", "rtu", "sim-dp", "offline"),
        ],
        "limiter": None,
        "alarms": [("dp1", "dp_low", T0 + 50.0)],
        "uplink": {
            "connected": False,
            "backlog": {"interval": 3, "event": 1},
            "last_publish": None,
        },
        "last_records": {"hm1": {"start": "2025-12-02T03:00:00Z", "flow_avg_m3h": 2.0}},
    }
    args.update(over)
    return snap.build_snapshot(**args)  # type: ignore[arg-type]


def test_snapshot_schema_v1() -> None:
    s = build()
    assert s["v"] == 1 and s["site"] == "sub-1" and s["boot"] == 7 and s["config_version"] == 3
    assert s["written"] == T0 + 100.5 and s["clock_synced"] is True and s["pid"] == 1234
    hm1 = s["devices"]["hm1"]  # type: ignore[index]
    assert hm1["health"] == "ok" and hm1["ts"] == T0 + 100 and hm1["ok"] is True
    assert hm1["values"]["energy_kwh"] == {"value": 1234.5, "unit": "kWh", "quality": "good"}
    assert hm1["counters"] == {"polls": 10, "polls_failed": 1}
    assert hm1["identity"] is None and hm1["transport"] == "tcp"
    dp1 = s["devices"]["dp1"]  # type: ignore[index]
    assert dp1["ts"] is None and dp1["values"] == {} and dp1["health"] == "offline"
    assert s["alarms"] == [{"kind": "dp_low", "device": "dp1", "since": T0 + 50.0}]
    assert s["uplink"]["backlog"] == {"interval": 3, "event": 1}  # type: ignore[index]
    assert s["last_records"]["hm1"]["flow_avg_m3h"] == 2.0  # type: ignore[index]
    json.loads(snap.dumps(s))  # plain JSON


def test_quality_and_non_finite_values() -> None:
    r = Reading(
        "dp1", "dp_sensor", T0, 0.0, True, True, {"dp_kpa": Value(math.nan, "kPa", Quality.FAULT)}
    )
    s = build(devices=[snap.DeviceView("dp1", "dp_sensor", "tcp", "p", "degraded", r)])
    v = s["devices"]["dp1"]["values"]["dp_kpa"]  # type: ignore[index]
    assert v == {"value": None, "unit": "kPa", "quality": "fault"}
    assert b"NaN" not in snap.dumps(s)


def test_telemetry_body_from_the_snapshot() -> None:
    lim = snap.limiter_view(params(), LimiterState.initial(), True, True)
    body = snap.telemetry_body(build(limiter=lim))
    assert set(body["devices"]) == {"hm1"}  # dp1 never read: not in telemetry
    d = body["devices"]["hm1"]
    assert d == {
        "ok": True,
        "health": "ok",
        "ts": T0 + 100,
        "clock_synced": True,
        "values": {
            "energy_kwh": {"value": 1234.5, "unit": "kWh", "quality": "good"},
            "flow_m3h": {"value": 2.0, "unit": "m3/h", "quality": "good"},
        },
    }
    assert body["limiting"] is True
    assert snap.telemetry_body(build())["limiting"] is False


def test_limiter_view_budget_follows_the_law() -> None:
    p = params()
    st = LimiterState.initial()
    assert snap.limiter_view(p, st, True, False)["period_volume_m3"] is None
    for i, vol in enumerate((100.0, 100.5, 101.0)):  # 1 m3 in the first 20 minutes
        m = MeterInput(
            t=T0 + i * 600, volume_m3=vol, energy_kwh=None, flow_m3h=3.0, power_kw=None, valid=True
        )
        st, _ = step(p, st, m)
    v = snap.limiter_view(p, st, True, st.limiting)
    assert v["period_start"] == T0 and v["period_end"] == T0 + 3600
    assert v["period_volume_m3"] == pytest.approx(1.0)
    assert v["budget_m3"] == 2.5 and v["active"] is True and v["enforce"] is True
    # 2.5 x 0.99 - 1.0 m3 left for 40 minutes: about 2.2 m3/h allowed
    left = (0.99 * 2.5 - 1.0) * 3600 / 2400
    assert v["allowed_flow_m3h"] == pytest.approx(left, rel=1e-3)
    none = snap.limiter_view(params(None), st, False, False)
    assert none["budget_m3"] is None and none["allowed_flow_m3h"] is None


def test_atomic_write_and_tolerant_read(tmp_path: Path) -> None:
    path = tmp_path / "run" / "live.json"
    assert snap.read_snapshot(path) is None
    s = build()
    snap.write_atomic(path, snap.dumps(s))
    assert snap.read_snapshot(path) == json.loads(snap.dumps(s))
    assert [p.name for p in path.parent.iterdir()] == ["live.json"]  # no temp left
    for bad in (
        b"",
        b"{",
        b"[]",
        b'{"v": 2, "devices": {}, "written": 1}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"v": 1, "devices": [], "written": 1}',
    ):
        path.write_bytes(bad)
        assert snap.read_snapshot(path) is None, bad[:20]
    path.write_bytes(b" " * (snap.MAX_BYTES + 1))
    assert snap.read_snapshot(path) is None


def test_freshness() -> None:
    s = build()
    assert snap.freshness(None, T0, 5) == "missing"
    assert snap.freshness(s, T0 + 100.5 + 14, 5) == "live"
    assert snap.freshness(s, T0 + 100.5 + 16, 5) == "stale"


class Ident:
    def to_json(self) -> dict[str, object]:
        return {"id": "12345678", "manufacturer": "KAM"}


def test_identity_of() -> None:
    assert snap.identity_of(object()) is None
    dev = type("D", (), {"identity": Ident()})()
    assert snap.identity_of(dev) == {"id": "12345678", "manufacturer": "KAM"}
    dev2 = type("D", (), {"identity": {"serial": "A1"}})()
    assert snap.identity_of(dev2) == {"serial": "A1"}


def test_live_config(tmp_path: Path) -> None:
    cfg = parse_text(GOOD, tmp_path)
    assert cfg.live.path == Path("/run/dh-agent/live.json") and cfg.live.every_s == 5.0
    cfg = parse_text(GOOD + '\n[live]\npath = "run/live.json"\nevery_s = 2\n', tmp_path)
    assert cfg.live.path == tmp_path / "run" / "live.json" and cfg.live.every_s == 2.0
    with pytest.raises(ConfigError) as e:
        parse_text(GOOD + "\n[live]\nevery_s = 0.5\nfoo = 1\npath = 3\n", tmp_path)
    assert set(e.value.problems) == {
        "live.every_s: must be >= 1",
        "live.foo: unknown key",
        "live.path: must be a non-empty path string",
    }


def test_web_config(tmp_path: Path) -> None:
    cfg = parse_text(GOOD, tmp_path)
    assert cfg.web.listen == "127.0.0.1:8080" and cfg.web.password_file is None
    cfg = parse_text(GOOD + '\n[web]\nlisten = "0.0.0.0:80"\npassword_file = "pw"\n', tmp_path)
    assert cfg.web.listen == "0.0.0.0:80" and cfg.web.password_file == tmp_path / "pw"
    with pytest.raises(ConfigError) as e:
        parse_text(GOOD + '\n[web]\nlisten = "8080"\nuser = "a:b"\nrefresh_s = 1\n', tmp_path)
    assert set(e.value.problems) == {
        "web.listen: must be HOST:PORT (e.g. 127.0.0.1:8080)",
        "web.user: must match 1-64 printable, no colon",
        "web.refresh_s: must be an integer 2..3600",
    }
