"""Configuration: TOML loading and validation (contract section 2).

``validate(doc, base)`` is pure: a parsed TOML document in, a ``Config`` or the full
list of problems out, each as ``path: message`` (all of them, not the first only).
Unknown keys are errors. Relative paths resolve against the config file's folder.
The types are in ``agent.config_types``, the key checkers and tables in
``agent.config_schema``, the ``[[devices]]`` checks in ``agent.config_devices``; this
module re-exports their public names and runs the checks in order (``validate``).

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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config_devices import MBUS_BAUDRATES, MBUS_UNUSED, check_devices
from agent.config_schema import (
    DEVICE_RE,
    DEVICE_SCHEMA,
    REQUIRED_TABLES,
    SCHEMA,
    SITE_RE,
    USER_RE,
    Check,
    check_table,
)
from agent.config_types import (
    DEFAULT_LIVE_PATH,
    Config,
    ConfigError,
    ContractCfg,
    CustomerCfg,
    DeliveryCfg,
    DeviceCfg,
    KeysCfg,
    LimiterCfg,
    LiveCfg,
    MqttCfg,
    PlausibilityParams,
    SiteCfg,
    StorageCfg,
    WebCfg,
)
from agent.protocol import ACTUATOR

__all__ = [
    "DEFAULT_LIVE_PATH",
    "DEVICE_RE",
    "DEVICE_SCHEMA",
    "MBUS_BAUDRATES",
    "MBUS_UNUSED",
    "REMOTE_DEVICE_KEYS",
    "REMOTE_MQTT_KEYS",
    "REMOTE_TABLES",
    "REQUIRED_TABLES",
    "SCHEMA",
    "SITE_RE",
    "USER_RE",
    "Check",
    "Config",
    "ConfigError",
    "ContractCfg",
    "CustomerCfg",
    "DeliveryCfg",
    "DeviceCfg",
    "KeysCfg",
    "LimiterCfg",
    "LiveCfg",
    "MqttCfg",
    "SiteCfg",
    "StorageCfg",
    "WebCfg",
    "load",
    "merge_remote",
    "parse_text",
    "remote_view",
    "validate",
]

# Keys an operator may change remotely (config/set). "devices" entries: only poll_s.
REMOTE_TABLES = ("contract", "delivery")
REMOTE_MQTT_KEYS = ("telemetry_s",)
REMOTE_DEVICE_KEYS = ("poll_s",)


def validate(
    doc: Mapping[str, Any], base: Path, profile_dir: Path | None = None
) -> tuple[Config | None, list[str]]:
    """Validate a parsed config document. Pure except for reading device profiles."""
    problems: list[str] = []
    t = _check_tables(doc, problems)
    devices = check_devices(doc, profile_dir, problems)
    _check_delivery(t["delivery"], problems)
    _check_limiter(t["limiter"], devices, problems)
    _check_contract(t["contract"], t["limiter"], devices, problems)
    _check_mqtt(doc, t["mqtt"], problems)
    _check_customer(t["customer"], problems)
    if problems:
        return None, problems
    return _build_config(doc, t, devices, base), []


def _check_tables(doc: Mapping[str, Any], problems: list[str]) -> dict[str, dict[str, Any]]:
    """Every table of ``SCHEMA`` checked (a missing optional one is empty); unknown
    top-level keys and missing required tables are problems."""
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
        t[tname] = check_table(doc[tname], schema, tname, problems)
    return t


def _check_delivery(dl: Mapping[str, Any], problems: list[str]) -> None:
    if "supply_min_c" in dl and "supply_max_c" in dl and dl["supply_min_c"] >= dl["supply_max_c"]:
        problems.append("delivery.supply_min_c: must be below delivery.supply_max_c")


def _check_limiter(lim: Mapping[str, Any], devices: list[DeviceCfg], problems: list[str]) -> None:
    """``limiter.actuator`` names an actuator device."""
    if "actuator" in lim:
        act = [d for d in devices if d.name == lim["actuator"]]
        if not act:
            problems.append(f"limiter.actuator: no device named {lim['actuator']!r}")
        elif act[0].role != ACTUATOR:
            problems.append(f"limiter.actuator: device {lim['actuator']!r} is not an actuator")


def _check_contract(
    c: Mapping[str, Any], lim: Mapping[str, Any], devices: list[DeviceCfg], problems: list[str]
) -> None:
    """An enforced limit needs an actuator."""
    if c.get("enforce", True) and ("flow_limit_m3h" in c or "power_limit_kw" in c):
        has_act = "actuator" in lim or any(d.role == ACTUATOR for d in devices)
        if devices and not has_act:
            problems.append("contract.enforce: true needs an actuator device")


def _check_mqtt(doc: Mapping[str, Any], m: Mapping[str, Any], problems: list[str]) -> None:
    """A client certificate comes with its key."""
    mqtt_table = "mqtt" in doc and isinstance(doc["mqtt"], dict)
    if mqtt_table and ("cert_file" in m) != ("key_file" in m):
        problems.append("mqtt.cert_file: cert_file and key_file go together")


def _check_customer(cu: Mapping[str, Any], problems: list[str]) -> None:
    host = str(cu.get("listen", "")).rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", "*"):
        problems.append("customer.listen: must be the address on the customer's network, not all")


def _build_config(
    doc: Mapping[str, Any], t: dict[str, dict[str, Any]], devices: list[DeviceCfg], base: Path
) -> Config:
    """The ``Config`` of a valid document: relative paths resolved against ``base``, the
    limiter's actuator defaulting to the first actuator device."""

    def rel(p: str | None) -> Path | None:
        if p is None:
            return None
        path = Path(p)
        return path if path.is_absolute() else (base / path)

    lim = t["limiter"]
    if "actuator" not in lim:
        acts = [d.name for d in devices if d.role == ACTUATOR]
        if acts:
            lim = {**lim, "actuator": acts[0]}
    mqtt_args: dict[str, Any] = {
        k: rel(v) if k.endswith("_file") else v for k, v in t["mqtt"].items()
    }
    return Config(
        site=SiteCfg(**t["site"]),
        mqtt=MqttCfg(**mqtt_args),
        keys=KeysCfg(
            agent_key=rel(t["keys"]["agent_key"]) or Path(),
            operator_pubkeys=tuple(rel(p) or Path() for p in t["keys"].get("operator_pubkeys", [])),
        ),
        storage=StorageCfg(**{**t["storage"], "path": rel(t["storage"]["path"]) or Path()}),
        contract=ContractCfg(**t["contract"]),
        delivery=DeliveryCfg(**t["delivery"]),
        limiter=LimiterCfg(**lim),
        devices=tuple(devices),
        log_level=t["log"].get("level", "info"),
        live=LiveCfg(
            path=rel(t["live"].get("path")) or DEFAULT_LIVE_PATH,
            every_s=t["live"].get("every_s", 5.0),
        ),
        web=WebCfg(**{**t["web"], "password_file": rel(t["web"].get("password_file"))}),
        plausibility=PlausibilityParams(**t["plausibility"]),
        customer=CustomerCfg(**t["customer"]),
        base=base,
        doc=copy.deepcopy(dict(doc)),
    )


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
