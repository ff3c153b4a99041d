"""The drivers' view of the configured devices: one driver spec (Modbus or wired M-Bus) per
``[[devices]]`` entry, built beside the config for the daemon (runner) and `dh-agent poll`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import DeviceCfg
from drivers.device import DeviceSpec
from drivers.profile import load_profile

if TYPE_CHECKING:
    from drivers.mbus_device import MbusSpec


def device_spec(d: DeviceCfg) -> DeviceSpec:
    """The driver's view of one configured Modbus device."""
    if d.transport == "mbus":
        raise ValueError(f"{d.name}: an M-Bus device (driver_spec)")
    return _modbus_spec(d)


def driver_spec(d: DeviceCfg) -> DeviceSpec | MbusSpec:
    """The driver's view of one configured device, Modbus or wired M-Bus."""
    if d.transport == "mbus":
        # here, not at the top: the M-Bus stack only for M-Bus devices (start-up time)
        from drivers.mbus_device import MbusSpec

        return MbusSpec(
            name=d.name,
            role=d.role,
            port=str(d.port),
            baudrate=d.baudrate,
            address=d.address,
            secondary=d.secondary,
            profile=d.profile,
            timeout_s=d.timeout_s,
            retries=d.retries,
        )
    return _modbus_spec(d)


def _modbus_spec(d: DeviceCfg) -> DeviceSpec:
    return DeviceSpec(
        name=d.name,
        role=d.role,
        profile=load_profile(d.profile),
        transport="tcp" if d.transport == "tcp" else "rtu",
        host=d.host,
        port=d.port,
        unit=d.unit,
        timeout_s=d.timeout_s,
        retries=d.retries,
        baudrate=d.baudrate,
        parity=d.parity,
        stopbits=d.stopbits,
        rs485=d.rs485,
    )
