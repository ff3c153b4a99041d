"""M-Bus telegrams to the agent's typed values: profiles, units, quality; pure.

An M-Bus profile (``firmware_cfg/profiles/mbus*.toml``) says which records of a
telegram become which canonical value (``drivers.types.HEAT_METER_VALUES``)::

    [profile]
    name = "mbus"
    description = "..."
    source = "..."

    [[select]]
    name = "energy_kwh"            # canonical value name
    quantity = "energy"            # decoded quantity (drivers.mbus_vif)
    storage = 0                    # optional, default 0
    tariff = 0                     # optional, default 0
    subunit = 0                    # optional, default 0
    function = "instantaneous"     # optional: instantaneous | maximum | minimum
    index = 0                      # optional: the n-th matching record (default the first)
    vif = 0x06                     # optional: only records with this VIF byte ...
    vifes = [0x22]                 # ... and these VIFE bytes
    unit = "kWh"                   # needed when the record has no unit (manufacturer VIF)
    range = [0, 1e8]               # optional plausibility of the converted value
    counter = true                 # optional, cumulative register
    rollover = 1e8                 # optional, where the register wraps

    [[flags]]                      # a record holding error bits (e.g. Kamstrup 04 FF 22)
    vif = 0xFF
    vifes = [0x22]
    mask = 0xFFFC                  # bits that make values doubtful
    affects = ["supply_c", "return_c"]

Quality: the status byte's application busy/error, permanent and temporary error bits,
a selected record in error state, a record without a value (e.g. BCD "FFFF"), or a
profile flag bit make the value ``meter_error``; outside ``range`` it is
``implausible``. ``status`` is the status byte's bits 0-4 plus the profile flags'
masked bits shifted left by 8 (0 = OK).
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.mbus_app import (
    STATUS_APP_MASK,
    STATUS_PERMANENT_ERROR,
    STATUS_TEMPORARY_ERROR,
    Record,
    Telegram,
)
from drivers.profile import profiles_dir
from drivers.types import Quality, Value

# target unit of each canonical name, and how a source unit converts to it
TARGET_UNITS: dict[str, str] = {
    "energy_kwh": "kWh",
    "volume_m3": "m3",
    "flow_m3h": "m3/h",
    "power_kw": "kW",
    "supply_c": "C",
    "return_c": "C",
    "delta_t_c": "K",
}
_FACTORS: dict[str, dict[str, float]] = {
    "kWh": {
        "Wh": 1e-3,
        "kWh": 1.0,
        "MWh": 1e3,
        "GWh": 1e6,
        "J": 1 / 3.6e6,
        "kJ": 1 / 3.6e3,
        "MJ": 1 / 3.6,
        "GJ": 1e3 / 3.6,
    },
    "m3": {"m3": 1.0, "l": 1e-3},
    "m3/h": {"m3/h": 1.0, "l/h": 1e-3, "m3/min": 60.0, "l/min": 0.06, "m3/s": 3600.0},
    "kW": {"W": 1e-3, "kW": 1.0, "MW": 1e3, "J/h": 1 / 3.6e6, "GJ/h": 1e3 / 3.6},
    "C": {"C": 1.0},
    "K": {"K": 1.0, "C": 1.0},
}
FUNCTIONS = ("instantaneous", "maximum", "minimum")
STATUS_BITS = 0x1F  # the standard bits of the status byte


class MbusProfileError(ValueError):
    """An M-Bus profile that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class Select:
    name: str
    quantity: str
    storage: int = 0
    tariff: int = 0
    subunit: int = 0
    function: str = "instantaneous"
    index: int = 0
    vif: int | None = None
    vifes: tuple[int, ...] | None = None
    unit: str | None = None
    range: tuple[float, float] | None = None
    counter: bool = False
    rollover: float | None = None


@dataclass(frozen=True, slots=True)
class Flag:
    vif: int
    vifes: tuple[int, ...]
    mask: int
    affects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MbusProfile:
    name: str
    description: str = ""
    source: str = ""
    selects: tuple[Select, ...] = ()
    flags: tuple[Flag, ...] = field(default_factory=tuple)


# --- profile files -----------------------------------------------------------------------


def _int(d: Mapping[str, Any], key: str, where: str, default: int, lo: int = 0) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise MbusProfileError(f"{where}.{key}: must be an integer >= {lo}, got {v!r}")
    return v


def _bytes_list(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 0xFF for b in v
    ):
        raise MbusProfileError(f"{where}: must be a list of bytes 0..255, got {v!r}")
    return tuple(v)


def _parse_select(d: Any, where: str) -> Select:
    known = set(Select.__slots__)
    if not isinstance(d, dict):
        raise MbusProfileError(f"{where}: must be a table")
    for k in d:
        if k not in known:
            raise MbusProfileError(f"{where}.{k}: unknown key")
    name = d.get("name")
    if name not in TARGET_UNITS:
        raise MbusProfileError(f"{where}.name: must be one of {sorted(TARGET_UNITS)}, got {name!r}")
    quantity = d.get("quantity")
    if not isinstance(quantity, str) or not quantity:
        raise MbusProfileError(f"{where}.quantity: must be a non-empty string")
    function = d.get("function", "instantaneous")
    if function not in FUNCTIONS:
        raise MbusProfileError(f"{where}.function: must be one of {FUNCTIONS}, got {function!r}")
    vif = d.get("vif")
    if vif is not None:
        vif = _bytes_list([vif], f"{where}.vif")[0]
    vifes = _bytes_list(d["vifes"], f"{where}.vifes") if "vifes" in d else None
    unit = d.get("unit")
    if unit is not None and unit not in _FACTORS[TARGET_UNITS[name]]:
        raise MbusProfileError(
            f"{where}.unit: {unit!r} cannot be converted to {TARGET_UNITS[name]}"
        )
    rng = d.get("range")
    if rng is not None and (
        not isinstance(rng, list)
        or len(rng) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in rng)
        or rng[0] > rng[1]
    ):
        raise MbusProfileError(f"{where}.range: must be [low, high], got {rng!r}")
    rollover = d.get("rollover")
    if rollover is not None and (not isinstance(rollover, int | float) or rollover <= 0):
        raise MbusProfileError(f"{where}.rollover: must be a positive number, got {rollover!r}")
    counter = d.get("counter", False)
    if not isinstance(counter, bool):
        raise MbusProfileError(f"{where}.counter: must be true or false")
    return Select(
        name=name,
        quantity=quantity,
        storage=_int(d, "storage", where, 0),
        tariff=_int(d, "tariff", where, 0),
        subunit=_int(d, "subunit", where, 0),
        function=function,
        index=_int(d, "index", where, 0),
        vif=vif,
        vifes=vifes,
        unit=unit,
        range=None if rng is None else (float(rng[0]), float(rng[1])),
        counter=counter,
        rollover=None if rollover is None else float(rollover),
    )


def _parse_flag(d: Any, where: str) -> Flag:
    if not isinstance(d, dict):
        raise MbusProfileError(f"{where}: must be a table")
    for k in d:
        if k not in ("vif", "vifes", "mask", "affects"):
            raise MbusProfileError(f"{where}.{k}: unknown key")
    vif = _int(d, "vif", where, -1)
    if vif > 255:
        raise MbusProfileError(f"{where}.vif: must be a byte 0..255")
    affects = d.get("affects", [])
    if not isinstance(affects, list) or any(a not in TARGET_UNITS for a in affects):
        raise MbusProfileError(f"{where}.affects: must list value names of {sorted(TARGET_UNITS)}")
    return Flag(
        vif=vif,
        vifes=_bytes_list(d.get("vifes", []), f"{where}.vifes"),
        mask=_int(d, "mask", where, -1, lo=1),
        affects=tuple(affects),
    )


def parse_mbus_profile(text: str, origin: str = "<string>") -> MbusProfile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MbusProfileError(f"{origin}: not valid TOML: {e}") from None
    head = doc.get("profile", {})
    if not isinstance(head, dict) or not isinstance(head.get("name"), str):
        raise MbusProfileError(f"{origin}: profile.name: missing")
    for k in doc:
        if k not in ("profile", "select", "flags"):
            raise MbusProfileError(f"{origin}: {k}: unknown section")
    sel = doc.get("select", [])
    flg = doc.get("flags", [])
    if not isinstance(sel, list) or not sel:
        raise MbusProfileError(f"{origin}: select: at least one [[select]] needed")
    if not isinstance(flg, list):
        raise MbusProfileError(f"{origin}: flags: must be an array of tables [[flags]]")
    selects = tuple(_parse_select(d, f"{origin}: select[{i}]") for i, d in enumerate(sel))
    return MbusProfile(
        name=head["name"],
        description=str(head.get("description", "")),
        source=str(head.get("source", "")),
        selects=selects,
        flags=tuple(_parse_flag(d, f"{origin}: flags[{i}]") for i, d in enumerate(flg)),
    )


def available_mbus_profiles(search: Path | None = None) -> list[str]:
    """Names of the M-Bus profiles (files ``mbus*.toml``)."""
    folder = search if search is not None else profiles_dir()
    return sorted(p.stem for p in folder.glob("mbus*.toml"))


def load_mbus_profile(name: str = "mbus", search: Path | None = None) -> MbusProfile:
    folder = search if search is not None else profiles_dir()
    path = folder / f"{name}.toml"
    if not name.startswith("mbus") or not path.is_file():
        raise MbusProfileError(f"no M-Bus profile {name!r} in {folder}")
    return parse_mbus_profile(path.read_text(encoding="utf-8"), origin=path.name)


# --- mapping -------------------------------------------------------------------------------


def _matches(r: Record, s: Select) -> bool:
    return (
        r.quantity == s.quantity
        and r.storage == s.storage
        and r.tariff == s.tariff
        and r.subunit == s.subunit
        and r.function == s.function
        and (s.vif is None or r.vif == s.vif)
        and (s.vifes is None or r.vifes == s.vifes)
    )


def convert(value: float, unit: str, target: str) -> float | None:
    """``value`` in ``unit`` expressed in ``target``; None when not convertible."""
    f = _FACTORS.get(target, {}).get(unit)
    return None if f is None else value * f


def _flag_bits(t: Telegram, profile: MbusProfile) -> tuple[int, set[str]]:
    bits = 0
    hit: set[str] = set()
    for fl in profile.flags:
        for r in t.records:
            if r.vif == fl.vif and r.vifes == fl.vifes and r.storage == 0:
                if isinstance(r.value, int) and r.value & fl.mask:
                    bits |= r.value & fl.mask
                    hit.update(fl.affects)
                elif not isinstance(r.value, int):
                    hit.update(fl.affects)  # unreadable flags: doubtful
                break
    return bits, hit


def status_doubtful(status: int) -> bool:
    """Status byte bits that make every value of the telegram doubtful."""
    return bool(status & (STATUS_APP_MASK | STATUS_PERMANENT_ERROR | STATUS_TEMPORARY_ERROR))


@functools.cache
def default_profile() -> MbusProfile:
    """The shipped default profile ``mbus`` (loaded once)."""
    return load_mbus_profile("mbus")


def map_values(t: Telegram, profile: MbusProfile | None = None) -> dict[str, Value]:
    """The canonical values of one telegram under ``profile`` (default ``mbus``), plus
    ``status``."""
    if profile is None:
        profile = default_profile()
    bits, flagged = _flag_bits(t, profile)
    all_bad = status_doubtful(t.status)
    out: dict[str, Value] = {}
    for s in profile.selects:
        if s.name in out:
            continue
        found = [r for r in t.records if _matches(r, s)]
        if len(found) <= s.index:
            continue
        r = found[s.index]
        target = TARGET_UNITS[s.name]
        unit = s.unit if s.unit is not None else r.unit
        if isinstance(r.value, int | float) and not isinstance(r.value, bool):
            conv = convert(float(r.value), unit, target)
        else:
            conv = None
        if conv is None or not math.isfinite(conv):
            out[s.name] = Value(0.0, target, Quality.METER_ERROR)
            continue
        q = Quality.GOOD
        if all_bad or r.error_state or s.name in flagged:
            q = Quality.METER_ERROR
        elif s.range is not None and not s.range[0] <= conv <= s.range[1]:
            q = Quality.IMPLAUSIBLE
        out[s.name] = Value(conv, target, q)
    out["status"] = Value(float((t.status & STATUS_BITS) | bits << 8), "")
    return out


def identity(t: Telegram) -> dict[str, Any]:
    """The meter's identity from the fixed header (None where the telegram has none)."""
    h = t.header
    return {
        "id": None if h is None else h.id,
        "manufacturer": None if h is None else h.manufacturer,
        "version": None if h is None else h.version,
        "medium": None if h is None else h.medium,
        "status": t.status,
    }


def _plain(v: float | int | str | bytes | None) -> float | int | str | None:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def stored_values(t: Telegram) -> list[dict[str, Any]]:
    """Records of storage 1 and up (e.g. the billing-date energy and its date), as
    plain JSON-able dicts in telegram order."""
    return [
        {
            "storage": r.storage,
            "tariff": r.tariff,
            "subunit": r.subunit,
            "function": r.function,
            "quantity": r.quantity,
            "value": _plain(r.value),
            "unit": r.unit,
            "error_state": r.error_state,
        }
        for r in t.records
        if r.storage >= 1
    ]
