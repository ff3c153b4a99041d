"""Config validation (contract section 2) and remote merge (section 7): pure."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import ConfigError, load, merge_remote, parse_text, remote_view, validate
from tests.support.configs import GOOD


def test_good_config_resolves_paths(tmp_path: Path) -> None:
    cfg = parse_text(GOOD, tmp_path)
    assert cfg.site.period_s == 900
    assert cfg.keys.agent_key == tmp_path / "agent.key"
    assert cfg.storage.path == tmp_path / "agent.db"
    assert cfg.limiter.actuator == "act1"
    assert cfg.mqtt.topic_prefix == "dh/v1"
    assert cfg.delivery.dp_min_kpa == 60.0


def test_example_config_is_valid() -> None:
    cfg = load(Path(__file__).parent.parent / "firmware_cfg" / "examples" / "agent.toml")
    assert cfg.contract.flow_limit_m3h == 2.5


def test_every_problem_reported_with_its_path(tmp_path: Path) -> None:
    bad = GOOD.replace('id = "sub-000123"', 'id = "Sub 1"').replace(
        "period_s = 900", "period_s = 7"
    )
    bad = bad.replace("unit = 3", "unit = 300\nbogus = 1").replace('"sim-heat-meter"', '"nope"')
    bad += "\n[extra]\nx = 1\n"
    with pytest.raises(ConfigError) as ei:
        parse_text(bad, tmp_path)
    probs = ei.value.problems
    for expected in (
        "site.id:",
        "site.period_s:",
        "devices[1].unit:",
        "devices[1].bogus: unknown key",
        "devices[0].profile: no profile 'nope'",
        "extra: unknown key",
    ):
        assert any(p.startswith(expected) for p in probs), (expected, probs)


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda s: s.replace('url = "mqtt://127.0.0.1:1883"', 'url = "http://x"'), "mqtt.url"),
        (
            lambda s: s.replace("port = 5020\nunit = 1", 'port = "/dev/ttyS0"\nunit = 1'),
            "devices[0].port",
        ),
        (
            lambda s: s.replace('profile = "sim-actuator"', 'profile = "sim-dp-sensor"'),
            "devices[1].profile",
        ),
        (
            lambda s: s.replace("flow_limit_m3h = 2.5", "flow_limit_m3h = -1"),
            "contract.flow_limit_m3h",
        ),
        (lambda s: s.replace('name = "act1"', 'name = "hm1"'), "devices[1].name"),
        (lambda s: s.replace('[storage]\npath = "agent.db"', "[storage]"), "storage.path"),
    ],
)
def test_single_problems(tmp_path: Path, edit, path: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as ei:
        parse_text(edit(GOOD), tmp_path)
    assert any(p.startswith(path + ":") for p in ei.value.problems), ei.value.problems


def test_enforce_needs_actuator(tmp_path: Path) -> None:
    doc = tomllib.loads(GOOD)
    doc["devices"] = doc["devices"][:1]
    cfg, probs = validate(doc, tmp_path)
    assert cfg is None and any(p.startswith("contract.enforce:") for p in probs)


def test_merge_remote() -> None:
    active = tomllib.loads(GOOD)
    merged, why = merge_remote(
        active, {"contract": {"flow_limit_m3h": 2.0}, "devices": [{"name": "hm1", "poll_s": 5}]}
    )
    assert why == "" and merged is not None
    assert merged["contract"] == {"flow_limit_m3h": 2.0, "enforce": True}
    assert merged["devices"][0]["poll_s"] == 5
    assert active["contract"]["flow_limit_m3h"] == 2.5  # the active doc is untouched
    assert merge_remote(active, {"mqtt": {"url": "mqtt://evil"}})[1] == "unknown_key: mqtt.url"
    assert merge_remote(active, {"site": {"id": "x"}})[1] == "unknown_key: site"
    assert merge_remote(active, {"contract": {"nope": 1}})[1] == "unknown_key: contract.nope"
    assert merge_remote(active, {"devices": [{"name": "zz", "poll_s": 1}]})[1].startswith(
        "invalid: devices[0].name"
    )
    assert merge_remote(active, [1, 2])[1].startswith("invalid:")


def test_merged_result_is_validated_whole(tmp_path: Path) -> None:
    merged, _ = merge_remote(tomllib.loads(GOOD), {"devices": [{"name": "hm1", "poll_s": -3}]})
    assert merged is not None
    cfg, probs = validate(merged, tmp_path)
    assert cfg is None and any(p.startswith("devices[0].poll_s:") for p in probs)


def test_remote_view(tmp_path: Path) -> None:
    view = remote_view(parse_text(GOOD, tmp_path))
    assert view["contract"]["flow_limit_m3h"] == 2.5
    assert {"name": "hm1", "poll_s": 1.0} in view["devices"]


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("period_s = 900", "period_s = 7"))
    cmd = [sys.executable, "-m", "agent.cli", "check-config", "--config"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    no = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, check=False)
    assert no.returncode == 2
    assert no.stdout.startswith("site.period_s:")
