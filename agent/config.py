"""Configuration: TOML loading and validation (contract section 2).

``validate(doc, base)`` is pure: a parsed TOML document in, a ``Config`` or the full
list of problems out, each as ``path: message`` (all of them, not the first only).
Unknown keys are errors. Relative paths resolve against the config file's folder.

Choices where the contract is silent (documented in README):
- ``site.period_s`` must divide 3600 and lie in 5..3600, so periods align to the hour.
- ``[delivery]`` holds the delivery-term thresholds (defaults: Finnish terms 2.2, 2.3, 5.5).
- ``[limiter]`` names the actuator device and tunes the control law.
- ``[log]`` sets the log level.
- Remotely manageable keys (``REMOTE_KEYS``): the whole ``[contract]``, ``[delivery]``,
  ``mqtt.telemetry_s`` and each device's ``poll_s``; ``merge_remote`` deep-merges a
  partial document over the active one (devices matched by name).
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.plausibility import PlausibilityParams
from agent.protocol import ROLES
from drivers.mbus_map import available_mbus_profiles
from drivers.profile import ProfileError, available_profiles, load_profile

SITE_RE = re.compile(r"^[a-z0-9-]{1,64}$")
DEVICE_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
USER_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,64}$")  # [web] user: no colon (basic auth)


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class SiteCfg:
    id: str
    period_s: int = 3600


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class KeysCfg:
    agent_key: Path
    operator_pubkeys: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageCfg:
    path: Path
    max_mb: float = 512.0
    sample_retention_days: float = 14.0
    flush_s: float = 300.0
    sample_every_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ContractCfg:
    flow_limit_m3h: float | None = None
    power_limit_kw: float | None = None
    enforce: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryCfg:
    supply_min_c: float = 65.0
    supply_max_c: float = 120.0
    dp_min_kpa: float = 60.0
    cooling_min_c: float = 25.0
    return_max_c: float = 65.0
    outage_supply_c: float = 40.0
    debounce_s: float = 10.0


@dataclass(frozen=True, slots=True)
class LimiterCfg:
    actuator: str | None = None
    watchdog_s: int = 60
    stroke_s: float = 90.0  # the actuator's full-stroke time (travel model)
    valve_characteristic: str = "equal-percentage"
    return_max_c: float | None = None  # return-temperature limitation; None: off


DEFAULT_LIVE_PATH = Path("/run/dh-agent/live.json")


@dataclass(frozen=True, slots=True)
class LiveCfg:
    """The live snapshot file (docs/live-snapshot.md)."""

    path: Path = DEFAULT_LIVE_PATH
    every_s: float = 5.0


@dataclass(frozen=True, slots=True)
class WebCfg:
    """The technician's page, ``dh-agent serve`` (docs/web.md)."""

    listen: str = "127.0.0.1:8080"
    password_file: Path | None = None
    user: str = "technician"
    idle_exit_s: float = 600.0
    refresh_s: int = 10


@dataclass(frozen=True, slots=True)
class CustomerCfg:
    """The customer's read-only Modbus TCP server (docs/customer-modbus.md)."""

    enabled: bool = False
    listen: str = "127.0.0.1:502"
    max_connections: int = 8
    max_requests_s: float = 50.0
    idle_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


# --- field checkers ------------------------------------------------------------------
# A checker returns (value, None) when fine or (None, message) when not.

Check = Callable[[Any], tuple[Any, str | None]]


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None, "must be a number"
        if not math.isfinite(v):
            return None, "must be a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return None, f"must be {'>' if lo_open else '>='} {lo:g}"
        if hi is not None and v > hi:
            return None, f"must be <= {hi:g}"
        return float(v), None

    return check


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int):
            return None, "must be an integer"
        if not lo <= v <= hi:
            return None, f"must be an integer {lo}..{hi}"
        return v, None

    return check


def _str(pattern: re.Pattern[str] | None = None, what: str = "") -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str):
            return None, "must be a string"
        if pattern is not None and not pattern.match(v):
            return None, f"must match {what or pattern.pattern}"
        return v, None

    return check


def _choice(*options: str) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if v not in options:
            return None, f"must be one of {', '.join(options)}"
        return v, None

    return check


def _bool(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, bool):
        return None, "must be true or false"
    return v, None


def _period(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, bool) or not isinstance(v, int):
        return None, "must be an integer number of seconds"
    if not 5 <= v <= 3600 or 3600 % v != 0:
        return None, "must be 3600 or 900, or another divisor of 3600 down to 5"
    return v, None


def _url(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not re.match(r"^mqtts?://[^/:\s]+(:\d{1,5})?/?$", v):
        return None, "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    return v, None


def _prefix(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not v or any(c in v for c in "+#\0") or v.startswith("/"):
        return None, "must be a non-empty topic without +, # or a leading /"
    return v.rstrip("/"), None


def _path(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not v:
        return None, "must be a non-empty path string"
    return v, None


def _paths(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
        return None, "must be a list of path strings"
    return v, None


def _listen(v: Any) -> tuple[Any, str | None]:
    pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253}):(\d{1,5})$"
    m = re.match(pattern, v) if isinstance(v, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        return None, "must be HOST:PORT (e.g. 127.0.0.1:8080)"
    return v, None


def _port(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, bool):
        return None, "must be a TCP port number or a serial device path"
    if isinstance(v, int):
        if not 1 <= v <= 65535:
            return None, "must be a TCP port 1..65535"
        return v, None
    if isinstance(v, str) and v.startswith("/"):
        return v, None
    return None, "must be a TCP port number or a serial device path"


# table name -> key -> (checker, required)
SCHEMA: dict[str, dict[str, tuple[Check, bool]]] = {
    "site": {
        "id": (_str(SITE_RE, "[a-z0-9-]{1,64}"), True),
        "period_s": (_period, False),
    },
    "mqtt": {
        "url": (_url, True),
        "topic_prefix": (_prefix, False),
        "client_id": (_str(re.compile(r"^[\x21-\x7e]{1,64}$"), "1-64 printable characters"), False),
        "username": (_str(), False),
        "password_file": (_path, False),
        "ca_file": (_path, False),
        "cert_file": (_path, False),
        "key_file": (_path, False),
        "keepalive_s": (_int(5, 3600), False),
        "telemetry_s": (_num(1, 3600), False),
    },
    "keys": {
        "agent_key": (_path, True),
        "operator_pubkeys": (_paths, False),
    },
    "storage": {
        "path": (_path, True),
        "max_mb": (_num(8, 1_000_000), False),
        "sample_retention_days": (_num(1, 3650), False),
        "flush_s": (_num(1, 3600), False),
        "sample_every_s": (_num(0, 3600), False),
    },
    "contract": {
        "flow_limit_m3h": (_num(0, 1000, lo_open=True), False),
        "power_limit_kw": (_num(0, 100_000, lo_open=True), False),
        "enforce": (_bool, False),
    },
    "delivery": {
        "supply_min_c": (_num(0, 200), False),
        "supply_max_c": (_num(0, 200), False),
        "dp_min_kpa": (_num(0, 2000), False),
        "cooling_min_c": (_num(0, 150), False),
        "return_max_c": (_num(0, 200), False),
        "outage_supply_c": (_num(0, 200), False),
        "debounce_s": (_num(0, 3600), False),
    },
    "limiter": {
        "actuator": (_str(DEVICE_RE, "[a-z0-9_-]{1,32}"), False),
        "watchdog_s": (_int(5, 3600), False),
        "stroke_s": (_num(0, 600), False),
        "valve_characteristic": (_choice("linear", "equal-percentage"), False),
        "return_max_c": (_num(10, 150), False),
    },
    "log": {
        "level": (_choice("debug", "info", "warning", "error"), False),
    },
    "live": {
        "path": (_path, False),
        "every_s": (_num(1, 60), False),
    },
    "web": {
        "listen": (_listen, False),
        "password_file": (_path, False),
        "user": (_str(USER_RE, "1-64 printable, no colon"), False),
        "idle_exit_s": (_num(0, 86400), False),
        "refresh_s": (_int(2, 3600), False),
    },
    "plausibility": {  # agent/plausibility.py, docs/plausibility.md
        "enabled": (_bool, False),
        "window_s": (_num(3600, 30 * 86400), False),
        "drift_pct": (_num(0.5, 50), False),
        "min_energy_kwh": (_num(0, 1e6), False),
        "min_coverage": (_num(0.1, 1), False),
        "max_gap_s": (_num(1, 86400), False),
        "flow_sensor": (_choice("return", "supply"), False),
        "flow_min_m3h": (_num(0, 100), False),
        "swap_margin_k": (_num(0, 50), False),
        "swap_after_s": (_num(0, 86400), False),
        "sensor_min_c": (_num(-50, 50), False),
        "sensor_max_c": (_num(100, 500), False),
        "sensor_after_s": (_num(0, 86400), False),
        "stuck_after_s": (_num(60, 7 * 86400), False),
        "stuck_power_span": (_num(0, 1), False),
        "end_after_s": (_num(0, 86400), False),
    },
    "customer": {  # agent/customer.py, docs/customer-modbus.md
        "enabled": (_bool, False),
        "listen": (_listen, False),
        "max_connections": (_int(1, 1024), False),
        "max_requests_s": (_num(1, 10_000), False),
        "idle_timeout_s": (_num(1, 86400), False),
    },
}

DEVICE_SCHEMA: dict[str, tuple[Check, bool]] = {
    "name": (_str(DEVICE_RE, "[a-z0-9_-]{1,32}"), True),
    "role": (_choice(*ROLES), True),
    "profile": (_str(re.compile(r"^[A-Za-z0-9_.-]{1,64}$"), "a profile name"), False),
    "transport": (_choice("tcp", "rtu", "mbus"), True),
    "host": (_str(re.compile(r"^[A-Za-z0-9_.:-]{1,253}$"), "a host name or address"), False),
    "port": (_port, False),
    "unit": (_int(0, 247), False),
    "poll_s": (_num(0.1, 3600), False),
    "timeout_s": (_num(0.05, 60), False),
    "retries": (_int(0, 10), False),
    "baudrate": (_int(300, 921600), False),
    "parity": (_choice("N", "E", "O"), False),
    "stopbits": (_int(1, 2), False),
    "rs485": (_bool, False),
    "address": (_int(0, 250), False),
    "secondary": (_str(re.compile(r"^[0-9]{8}$"), "8 digits (the identification number)"), False),
}

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
    known = available_mbus_profiles()
    if prof not in known:
        problems.append(f"{where}.profile: no M-Bus profile {prof!r} (have: {', '.join(known)})")
    if vals.get("role", "heat_meter") != "heat_meter":
        problems.append(f"{where}.role: transport mbus reads heat meters (role heat_meter)")
    vals.setdefault("timeout_s", round(330.0 / float(baud) + 0.05, 4))


REQUIRED_TABLES = ("site", "mqtt", "keys", "storage")

# Keys an operator may change remotely (config/set). "devices" entries: only poll_s.
REMOTE_TABLES = ("contract", "delivery")
REMOTE_MQTT_KEYS = ("telemetry_s",)
REMOTE_DEVICE_KEYS = ("poll_s",)


def _check_table(
    table: Any, schema: Mapping[str, tuple[Check, bool]], where: str, problems: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return out
    for key in table:
        if key not in schema:
            problems.append(f"{where}.{key}: unknown key")
    for key, (check, required) in schema.items():
        if key not in table:
            if required:
                problems.append(f"{where}.{key}: missing (required)")
            continue
        val, err = check(table[key])
        if err is not None:
            problems.append(f"{where}.{key}: {err}")
        else:
            out[key] = val
    return out


def validate(
    doc: Mapping[str, Any], base: Path, profile_dir: Path | None = None
) -> tuple[Config | None, list[str]]:
    """Validate a parsed config document. Pure except for reading device profiles."""
    problems: list[str] = []
    for key in doc:
        if key not in SCHEMA and key != "devices":
            problems.append(f"{key}: unknown key")
    t: dict[str, dict[str, Any]] = {}
    for tname, schema in SCHEMA.items():
        if tname not in doc:
            if tname in REQUIRED_TABLES:
                problems.append(f"{tname}: missing table [{tname}]")
            t[tname] = {}
            continue
        t[tname] = _check_table(doc[tname], schema, tname, problems)

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
        where = f"devices[{i}]"
        vals = _check_table(d, DEVICE_SCHEMA, where, problems)
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
        transport = vals.get("transport")
        _check_transport(vals, d, where, problems)
        port = vals.get("port", 502 if transport == "tcp" else None)
        if transport == "tcp" and "port" in vals and not isinstance(port, int):
            problems.append(f"{where}.port: must be a TCP port number for transport tcp")
        if transport == "rtu":
            if port is None or ("port" in vals and not isinstance(port, str)):
                problems.append(f"{where}.port: must be a serial device path for transport rtu")
            if "host" in vals:
                problems.append(f"{where}.host: not used with transport rtu")
        prof = vals.get("profile")
        if prof is None or transport == "mbus":
            pass
        elif prof not in known_profiles:
            problems.append(
                f"{where}.profile: no profile {prof!r} (have: {', '.join(sorted(known_profiles))})"
            )
        else:
            try:
                p = load_profile(str(prof), profile_dir)
                if "role" in vals and p.role != vals["role"]:  # a bad role: said above
                    problems.append(
                        f"{where}.profile: profile {prof!r} is for role {p.role}, "
                        f"not {vals.get('role')}"
                    )
            except ProfileError as e:
                problems.append(f"{where}.profile: {e}")
        if complete:
            devices.append(DeviceCfg(**{**vals, "port": port if port is not None else 502}))

    c = t["contract"]
    dl = t["delivery"]
    if "supply_min_c" in dl and "supply_max_c" in dl and dl["supply_min_c"] >= dl["supply_max_c"]:
        problems.append("delivery.supply_min_c: must be below delivery.supply_max_c")
    lim = t["limiter"]
    if "actuator" in lim:
        act = [d for d in devices if d.name == lim["actuator"]]
        if not act:
            problems.append(f"limiter.actuator: no device named {lim['actuator']!r}")
        elif act[0].role != "actuator":
            problems.append(f"limiter.actuator: device {lim['actuator']!r} is not an actuator")
    if c.get("enforce", True) and ("flow_limit_m3h" in c or "power_limit_kw" in c):
        has_act = "actuator" in lim or any(d.role == "actuator" for d in devices)
        if devices and not has_act:
            problems.append("contract.enforce: true needs an actuator device")
    if "mqtt" in doc and isinstance(doc["mqtt"], dict):
        m = t["mqtt"]
        if ("cert_file" in m) != ("key_file" in m):
            problems.append("mqtt.cert_file: cert_file and key_file go together")
    cu = t["customer"]
    host = str(cu.get("listen", "")).rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", "*"):
        problems.append("customer.listen: must be the address on the customer's network, not all")
    if problems:
        return None, problems

    def rel(p: str | None) -> Path | None:
        if p is None:
            return None
        path = Path(p)
        return path if path.is_absolute() else (base / path)

    if "actuator" not in lim:
        acts = [d.name for d in devices if d.role == "actuator"]
        if acts:
            lim = {**lim, "actuator": acts[0]}
    mqtt_args: dict[str, Any] = {
        k: rel(v) if k.endswith("_file") else v for k, v in t["mqtt"].items()
    }
    cfg = Config(
        site=SiteCfg(**t["site"]),
        mqtt=MqttCfg(**mqtt_args),
        keys=KeysCfg(
            agent_key=rel(t["keys"]["agent_key"]) or Path(),
            operator_pubkeys=tuple(rel(p) or Path() for p in t["keys"].get("operator_pubkeys", [])),
        ),
        storage=StorageCfg(**{**t["storage"], "path": rel(t["storage"]["path"]) or Path()}),
        contract=ContractCfg(**c),
        delivery=DeliveryCfg(**dl),
        limiter=LimiterCfg(**lim),
        devices=tuple(devices),
        log_level=t["log"].get("level", "info"),
        live=LiveCfg(
            path=rel(t["live"].get("path")) or DEFAULT_LIVE_PATH,
            every_s=t["live"].get("every_s", 5.0),
        ),
        web=WebCfg(**{**t["web"], "password_file": rel(t["web"].get("password_file"))}),
        plausibility=PlausibilityParams(**t["plausibility"]),
        customer=CustomerCfg(**cu),
        base=base,
        doc=copy.deepcopy(dict(doc)),
    )
    return cfg, []


def parse_text(text: str, base: Path, profile_dir: Path | None = None) -> Config:
    """Parse and validate TOML text; raises ConfigError with every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"(toml): {e}"]) from e
    cfg, problems = validate(doc, base, profile_dir)
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def load(path: str | Path, profile_dir: Path | None = None) -> Config:
    """Load and validate a config file; raises ConfigError with every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"(file): cannot read {p}: {e.strerror}"]) from e
    return parse_text(text, p.resolve().parent, profile_dir)


# --- remote configuration (contract section 7) ----------------------------------------


def merge_remote(active: Mapping[str, Any], partial: Any) -> tuple[dict[str, Any] | None, str]:
    """Deep-merge an operator's partial document over the active one.

    Only the remotely manageable keys may appear. Returns (merged, "") or
    (None, reason) with reason ``unknown_key: PATH`` or ``invalid: PATH: message``.
    The merged document must still be validated as a whole (``validate``).
    """
    if not isinstance(partial, dict):
        return None, "invalid: config: must be an object"
    merged = copy.deepcopy(dict(active))
    for key, val in partial.items():
        if key in REMOTE_TABLES:
            if not isinstance(val, dict):
                return None, f"invalid: {key}: must be an object"
            for k in val:
                if k not in SCHEMA[key]:
                    return None, f"unknown_key: {key}.{k}"
            table = dict(merged.get(key, {}))
            for k, v in val.items():
                if v is None:
                    table.pop(k, None)  # null removes the key (e.g. drop a limit)
                else:
                    table[k] = v
            merged[key] = table
        elif key == "mqtt":
            if not isinstance(val, dict):
                return None, "invalid: mqtt: must be an object"
            for k in val:
                if k not in REMOTE_MQTT_KEYS:
                    return None, f"unknown_key: mqtt.{k}"
            merged["mqtt"] = {**merged.get("mqtt", {}), **val}
        elif key == "devices":
            if not isinstance(val, list):
                return None, "invalid: devices: must be a list of objects with name"
            devs = [dict(d) for d in merged.get("devices", [])]
            for i, d in enumerate(val):
                if not isinstance(d, dict) or not isinstance(d.get("name"), str):
                    return None, f"invalid: devices[{i}]: must be an object with name"
                for k in d:
                    if k != "name" and k not in REMOTE_DEVICE_KEYS:
                        return None, f"unknown_key: devices[{i}].{k}"
                target = [x for x in devs if x.get("name") == d["name"]]
                if not target:
                    return None, f"invalid: devices[{i}].name: no device named {d['name']!r}"
                target[0].update({k: v for k, v in d.items() if k != "name"})
            merged["devices"] = devs
        else:
            return None, f"unknown_key: {key}"
    return merged, ""


def remote_view(cfg: Config) -> dict[str, Any]:
    """The active remotely manageable configuration (for ``config/current``)."""
    doc = cfg.doc
    return {
        "contract": dict(doc.get("contract", {})),
        "delivery": dict(doc.get("delivery", {})),
        "mqtt": {k: v for k, v in doc.get("mqtt", {}).items() if k in REMOTE_MQTT_KEYS},
        "devices": [{"name": d.name, "poll_s": d.poll_s} for d in cfg.devices],
    }
