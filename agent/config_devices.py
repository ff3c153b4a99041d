"""The ``[[devices]]`` of a configuration (``agent.config``): each entry checked against
``DEVICE_SCHEMA``, unique names, the transport's keys (Modbus TCP, Modbus RTU, wired M-Bus)
and the device's profile (it exists and is for the device's role)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config_schema import DEVICE_SCHEMA, check_table
from agent.config_types import DeviceCfg
from agent.protocol import HEAT_METER
from drivers.profile import ProfileError, available_profiles, load_profile


def check_devices(
    doc: Mapping[str, Any], profile_dir: Path | None, problems: list[str]
) -> list[DeviceCfg]:
    """The complete device entries of ``doc``; every problem goes to ``problems``."""
    devices: list[DeviceCfg] = []
    devs = doc.get("devices", [])
    if not isinstance(devs, list):
        problems.append("devices: must be an array of tables [[devices]]")
        devs = []
    if not devs:
        problems.append("devices: at least one [[devices]] entry needed")
    names: set[str] = set()
    known_profiles = set(available_profiles(profile_dir))
    for i, d in enumerate(devs):
        dev = _check_device(d, f"devices[{i}]", names, known_profiles, profile_dir, problems)
        if dev is not None:
            devices.append(dev)
    return devices


def _check_device(
    d: Any,
    where: str,
    names: set[str],
    known_profiles: set[str],
    profile_dir: Path | None,
    problems: list[str],
) -> DeviceCfg | None:
    """One ``[[devices]]`` entry; None when it is not complete (its problems are listed).
    ``names`` collects the device names seen so far."""
    vals = check_table(d, DEVICE_SCHEMA, where, problems)
    complete = (
        isinstance(d, dict)
        and all(k in vals for k in d if k in DEVICE_SCHEMA)
        and all(k in vals for k, (_, req) in DEVICE_SCHEMA.items() if req)
        and (vals.get("transport") == "mbus" or "profile" in vals)
    )
    name = vals.get("name")
    if name is not None and name in names:
        problems.append(f"{where}.name: duplicate device name {name!r}")
    names.add(str(name))
    _check_transport(vals, d, where, problems)
    port = _check_port(vals, where, problems)
    _check_profile(vals, where, known_profiles, profile_dir, problems)
    if complete:
        return DeviceCfg(**{**vals, "port": port if port is not None else 502})
    return None


def _check_port(vals: dict[str, Any], where: str, problems: list[str]) -> Any:
    """The Modbus transports' port (tcp: a number, default 502; rtu: a serial device path)
    and rtu's unused host; returns the port (None: none given and no default)."""
    transport = vals.get("transport")
    port = vals.get("port", 502 if transport == "tcp" else None)
    if transport == "tcp" and "port" in vals and not isinstance(port, int):
        problems.append(f"{where}.port: must be a TCP port number for transport tcp")
    if transport == "rtu":
        if port is None or ("port" in vals and not isinstance(port, str)):
            problems.append(f"{where}.port: must be a serial device path for transport rtu")
        if "host" in vals:
            problems.append(f"{where}.host: not used with transport rtu")
    return port


def _check_profile(
    vals: dict[str, Any],
    where: str,
    known_profiles: set[str],
    profile_dir: Path | None,
    problems: list[str],
) -> None:
    """A Modbus device's profile: shipped (or in ``profile_dir``), loadable, for its role."""
    prof = vals.get("profile")
    if prof is None or vals.get("transport") == "mbus":
        return
    if prof not in known_profiles:
        problems.append(
            f"{where}.profile: no profile {prof!r} (have: {', '.join(sorted(known_profiles))})"
        )
        return
    try:
        p = load_profile(str(prof), profile_dir)
        if "role" in vals and p.role != vals["role"]:  # a bad role: said above
            problems.append(
                f"{where}.profile: profile {prof!r} is for role {p.role}, not {vals.get('role')}"
            )
    except ProfileError as e:
        problems.append(f"{where}.profile: {e}")


MBUS_BAUDRATES = (300, 2400, 9600)
MBUS_UNUSED = ("host", "unit", "parity", "stopbits", "rs485")


def _check_transport(vals: dict[str, Any], d: Any, where: str, problems: list[str]) -> None:
    """M-Bus devices (``_check_mbus``); the M-Bus keys on others; a Modbus profile."""
    if vals.get("transport") == "mbus":
        _check_mbus(vals, where, problems)
        return
    for k in ("address", "secondary"):
        if k in vals:
            problems.append(f"{where}.{k}: only used with transport mbus")
    if isinstance(d, dict) and "profile" not in d:
        problems.append(f"{where}.profile: missing (required)")


def _check_mbus(vals: dict[str, Any], where: str, problems: list[str]) -> None:
    """A wired M-Bus device (contract 2a): serial port, 8E1 at 300/2400/9600 baud, a
    primary ``address`` or a ``secondary`` address, an M-Bus profile (default ``mbus``).
    Fills the defaults into ``vals``: profile ``mbus``, 2400 baud, and the standard reply
    timeout (330 bit times + 50 ms) unless ``timeout_s`` is given."""
    port = vals.get("port")
    if not isinstance(port, str):
        problems.append(f"{where}.port: must be a serial device path for transport mbus")
    for k in MBUS_UNUSED:
        if k in vals:
            problems.append(f"{where}.{k}: not used with transport mbus")
    baud = vals.setdefault("baudrate", 2400)
    if baud not in MBUS_BAUDRATES:
        problems.append(f"{where}.baudrate: must be 300, 2400 or 9600 for transport mbus")
    if ("address" in vals) == ("secondary" in vals):
        problems.append(f"{where}.address: give either address (0..250) or secondary")
    prof = vals.setdefault("profile", "mbus")
    # here, not at the top: the M-Bus stack (about 10 ms of start-up) only for M-Bus devices
    from drivers.mbus_map import available_mbus_profiles

    known = available_mbus_profiles()
    if prof not in known:
        problems.append(f"{where}.profile: no M-Bus profile {prof!r} (have: {', '.join(known)})")
    if vals.get("role", HEAT_METER) != HEAT_METER:
        problems.append(f"{where}.role: transport mbus reads heat meters (role heat_meter)")
    vals.setdefault("timeout_s", round(330.0 / float(baud) + 0.05, 4))
