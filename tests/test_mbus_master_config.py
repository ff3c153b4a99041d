"""Config of a wired M-Bus device (contract section 2a): pure validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, parse_text
from agent.devices import driver_spec
from drivers.mbus_device import MbusSpec

HEAD = """
[site]
id = "s1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[keys]
agent_key = "agent.key"
[storage]
path = "agent.db"
[contract]
enforce = false
"""


def dev(body: str) -> str:
    return HEAD + '[[devices]]\nname = "hm1"\nrole = "heat_meter"\ntransport = "mbus"\n' + body


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_text(text, Path("."))
    return e.value.problems


def test_primary_address_with_defaults() -> None:
    cfg = parse_text(dev('port = "/dev/ttyUSB0"\naddress = 17\npoll_s = 60\n'), Path("."))
    d = cfg.devices[0]
    assert (d.transport, d.address, d.secondary, d.profile, d.baudrate) == (
        "mbus",
        17,
        None,
        "mbus",
        2400,
    )
    assert d.timeout_s == pytest.approx(330 / 2400 + 0.05, abs=1e-3)  # the standard timeout
    spec = driver_spec(d)
    assert isinstance(spec, MbusSpec) and spec.port == "/dev/ttyUSB0" and spec.address == 17


def test_secondary_address_and_other_baudrate() -> None:
    cfg = parse_text(
        dev('port = "/dev/ttyUSB0"\nsecondary = "06855817"\nbaudrate = 9600\n'), Path(".")
    )
    d = cfg.devices[0]
    assert d.secondary == "06855817" and d.address is None and d.baudrate == 9600
    assert d.timeout_s == pytest.approx(330 / 9600 + 0.05, abs=1e-3)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('port = "/dev/ttyUSB0"\n', "devices[0].address: give either"),
        ('port = "/dev/ttyUSB0"\naddress = 1\nsecondary = "12345678"\n', "devices[0].address"),
        ('port = "/dev/ttyUSB0"\naddress = 251\n', "devices[0].address: must be an integer 0..250"),
        ('port = "/dev/ttyUSB0"\nsecondary = "1234F678"\n', "devices[0].secondary: must match"),
        ('port = "/dev/ttyUSB0"\naddress = 1\nbaudrate = 19200\n', "devices[0].baudrate"),
        ("port = 502\naddress = 1\n", "devices[0].port: must be a serial device path"),
        ('port = "/dev/ttyUSB0"\naddress = 1\nunit = 3\n', "devices[0].unit: not used"),
        ('port = "/dev/ttyUSB0"\naddress = 1\nprofile = "sim-heat-meter"\n', "devices[0].profile"),
    ],
)
def test_bad_mbus_devices_name_their_path(body: str, path: str) -> None:
    got = problems(dev(body))
    assert any(p.startswith(path) for p in got), got


def test_mbus_keys_on_a_modbus_device_and_profile_still_required() -> None:
    text = (
        HEAD + '[[devices]]\nname = "hm1"\nrole = "heat_meter"\nprofile = "sim-heat-meter"\n'
        'transport = "tcp"\nport = 502\naddress = 3\n'
    )
    assert "devices[0].address: only used with transport mbus" in problems(text)
    text = HEAD + '[[devices]]\nname = "hm1"\nrole = "heat_meter"\ntransport = "tcp"\nport = 502\n'
    assert "devices[0].profile: missing (required)" in problems(text)


def test_an_mbus_device_reads_heat_meters_only() -> None:
    text = dev('port = "/dev/ttyUSB0"\naddress = 1\n').replace(
        'role = "heat_meter"', 'role = "dp_sensor"'
    )
    assert any(p.startswith("devices[0].role") for p in problems(text))
