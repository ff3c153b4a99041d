"""The configuration's types (``agent.config``): one frozen dataclass per table, ``Config``
holding them all, and ``ConfigError`` listing every problem of an invalid document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from drivers.dataclass_lite import frozen


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@frozen
class PlausibilityParams:
    """The ``[plausibility]`` section (agent/plausibility.py uses it; defined here so the
    config does not import the checks themselves)."""

    enabled: bool = True
    window_s: float = 86400.0
    drift_pct: float = 5.0
    min_energy_kwh: float = 10.0
    min_coverage: float = 0.9
    max_gap_s: float = 900.0
    flow_sensor: str = "return"  # the pipe the volume is measured in
    flow_min_m3h: float = 0.02
    swap_margin_k: float = 1.0
    swap_after_s: float = 900.0
    sensor_min_c: float = 0.5
    sensor_max_c: float = 150.0
    sensor_after_s: float = 60.0
    stuck_after_s: float = 7200.0
    stuck_power_span: float = 0.02
    end_after_s: float = 300.0


@frozen
class SiteCfg:
    id: str
    period_s: int = 3600


@frozen
class MqttCfg:
    url: str
    topic_prefix: str = "dh/v1"
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    telemetry_s: float = 10.0


@frozen
class KeysCfg:
    agent_key: Path
    operator_pubkeys: tuple[Path, ...] = ()


@frozen
class StorageCfg:
    path: Path
    max_mb: float = 512.0
    sample_retention_days: float = 14.0
    flush_s: float = 300.0
    sample_every_s: float = 10.0


@frozen
class ContractCfg:
    flow_limit_m3h: float | None = None
    power_limit_kw: float | None = None
    enforce: bool = True


@frozen
class DeliveryCfg:
    supply_min_c: float = 65.0
    supply_max_c: float = 120.0
    dp_min_kpa: float = 60.0
    cooling_min_c: float = 25.0
    return_max_c: float = 65.0
    outage_supply_c: float = 40.0
    debounce_s: float = 10.0


@frozen
class LimiterCfg:
    actuator: str | None = None
    watchdog_s: int = 60
    stroke_s: float = 90.0  # the actuator's full-stroke time (travel model)
    valve_characteristic: str = "equal-percentage"
    return_max_c: float | None = None  # return-temperature limitation; None: off


DEFAULT_LIVE_PATH = Path("/run/dh-agent/live.json")


@frozen
class LiveCfg:
    """The live snapshot file (docs/live-snapshot.md)."""

    path: Path = DEFAULT_LIVE_PATH
    every_s: float = 5.0


@frozen
class WebCfg:
    """The technician's page, ``dh-agent serve`` (docs/web.md)."""

    listen: str = "127.0.0.1:8080"
    password_file: Path | None = None
    user: str = "technician"
    idle_exit_s: float = 600.0
    refresh_s: int = 10


@frozen
class CustomerCfg:
    """The customer's read-only Modbus TCP server (docs/customer-modbus.md)."""

    enabled: bool = False
    listen: str = "127.0.0.1:502"
    max_connections: int = 8
    max_requests_s: float = 50.0
    idle_timeout_s: float = 120.0


@frozen
class DeviceCfg:
    name: str
    role: str
    profile: str
    transport: str
    host: str = "127.0.0.1"
    port: int | str = 502
    unit: int = 1
    poll_s: float = 1.0
    timeout_s: float = 1.0
    retries: int = 2
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    rs485: bool = False
    address: int | None = None  # mbus: primary address 0..250
    secondary: str | None = None  # mbus: 8-digit identification number


@frozen
class Config:
    site: SiteCfg
    mqtt: MqttCfg
    keys: KeysCfg
    storage: StorageCfg
    contract: ContractCfg
    delivery: DeliveryCfg
    limiter: LimiterCfg
    devices: tuple[DeviceCfg, ...]
    log_level: str = "info"
    live: LiveCfg = field(default_factory=LiveCfg)
    web: WebCfg = field(default_factory=WebCfg)
    plausibility: PlausibilityParams = field(default_factory=PlausibilityParams)
    customer: CustomerCfg = field(default_factory=CustomerCfg)
    base: Path = field(default=Path("."))
    doc: Mapping[str, Any] = field(default_factory=dict)  # the validated source document

    def device(self, name: str) -> DeviceCfg:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)
