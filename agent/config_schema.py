"""The configuration's schema (``agent.config``): a checker per key, the tables of keys
(``SCHEMA``, ``DEVICE_SCHEMA``), the required tables, and ``check_table``, which checks one
table against its schema and collects every problem as ``path: message``."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from agent.protocol import ROLES

SITE_RE = re.compile(r"^[a-z0-9-]{1,64}$")
DEVICE_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
USER_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,64}$")  # [web] user: no colon (basic auth)

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

REQUIRED_TABLES = ("site", "mqtt", "keys", "storage")


def check_table(
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
