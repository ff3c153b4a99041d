"""Device profiles: register maps kept as data (``firmware_cfg/profiles/*.toml``).

Pure: loading a profile parses TOML text, the codec turns register words into values
and back, and ``plan_reads`` coalesces adjacent registers into as few Modbus reads as
the protocol allows. Both the drivers and the simulator use this module, so the
simulator serves exactly the layout the drivers decode.

Profile file format::

    [profile]
    name = "sim-heat-meter"
    role = "heat_meter"            # heat_meter | dp_sensor | actuator
    description = "..."
    source = "where the map comes from"
    confirmed = true               # false: parts of the map are not publicly confirmed
    word_order = "big"             # default for 32-bit types: "big" = high word first
    max_gap = 0                    # unused registers a coalesced read may span

    [[registers]]
    name = "energy_kwh"            # canonical value name (drivers.types)
    address = 100                  # 0-based protocol address
    function = "holding"           # holding (FC3/6/16) | input (FC4)
    type = "u32"                   # u16 | s16 | u32 | s32 | f32
    word_order = "big"             # optional, overrides the profile default
    scale = 1.0                    # value = raw * scale + offset
    offset = 0.0
    unit = "kWh"
    meaning = "..."
    range = [0, 1e8]               # physical plausibility of the scaled value
    raw_range = [3500, 21500]      # optional: raw values outside mean a sensor fault
    counter = true                 # optional: cumulative register
    rollover = 1e8                 # optional: counter wraps to 0 at this scaled value
    writable = false
    confirmed = true               # optional, per register
"""

from __future__ import annotations

import itertools
import math
import struct
import tomllib
from pathlib import Path
from typing import Any, Literal

from agent.protocol import ROLES
from drivers.dataclass_lite import frozen
from drivers.types import Quality, Value

RegType = Literal["u16", "s16", "u32", "s32", "f32"]
Function = Literal["holding", "input"]
WordOrder = Literal["big", "little"]

REG_TYPES: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2}
MAX_READ_REGISTERS = 125  # Modbus limit for FC3/FC4


class ProfileError(ValueError):
    """A profile file that does not describe a usable register map."""


@frozen
class Register:
    name: str
    address: int
    function: Function
    type: RegType
    word_order: WordOrder
    scale: float
    offset: float
    unit: str
    meaning: str
    range: tuple[float, float] | None
    raw_range: tuple[float, float] | None
    counter: bool
    rollover: float | None
    writable: bool
    confirmed: bool

    @property
    def count(self) -> int:
        return REG_TYPES[self.type]

    @property
    def end(self) -> int:
        """One past the last register address this value occupies."""
        return self.address + self.count


@frozen
class Profile:
    name: str
    role: str
    description: str
    source: str
    confirmed: bool
    max_gap: int
    registers: tuple[Register, ...]

    def register(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(f"profile {self.name} has no register {name!r}")

    def has(self, name: str) -> bool:
        return any(r.name == name for r in self.registers)


@frozen
class ReadBlock:
    """One Modbus read request covering one or more registers."""

    function: Function
    address: int
    count: int
    registers: tuple[Register, ...]


# --- loading -------------------------------------------------------------------------


def _pair(v: Any, where: str) -> tuple[float, float] | None:
    if v is None:
        return None
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
    ):
        raise ProfileError(f"{where}: must be a list of two numbers")
    lo, hi = float(v[0]), float(v[1])
    if lo > hi:
        raise ProfileError(f"{where}: low end above high end")
    return (lo, hi)


_REG_KEYS = {
    "name",
    "address",
    "function",
    "type",
    "word_order",
    "scale",
    "offset",
    "unit",
    "meaning",
    "range",
    "raw_range",
    "counter",
    "rollover",
    "writable",
    "confirmed",
}
_PROFILE_KEYS = {
    "name",
    "role",
    "description",
    "source",
    "confirmed",
    "word_order",
    "max_gap",
}


def parse_profile(text: str, origin: str = "<profile>") -> Profile:
    """Parse a profile's TOML text; raises ProfileError naming the bad path."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{origin}: {e}") from e
    head, role, default_wo = _parse_head(doc, origin)
    regs_doc = doc.get("registers")
    if not isinstance(regs_doc, list) or not regs_doc:
        raise ProfileError(f"{origin}: registers: at least one [[registers]] entry needed")
    regs: list[Register] = []
    seen: set[str] = set()
    default_confirmed = head.get("confirmed", True)
    for i, r in enumerate(regs_doc):
        regs.append(
            _parse_register(r, f"{origin}: registers[{i}]", default_wo, default_confirmed, seen)
        )
    _check_overlaps(regs, origin)
    max_gap = head.get("max_gap", 0)
    if not isinstance(max_gap, int) or isinstance(max_gap, bool) or not 0 <= max_gap <= 124:
        raise ProfileError(f"{origin}: profile.max_gap: must be an integer 0..124")
    return Profile(
        name=str(head.get("name", origin)),
        role=role,
        description=str(head.get("description", "")),
        source=str(head.get("source", "")),
        confirmed=bool(head.get("confirmed", True)),
        max_gap=max_gap,
        registers=tuple(regs),
    )


def _parse_head(doc: dict[str, Any], origin: str) -> tuple[dict[str, Any], str, str]:
    """The ``[profile]`` table checked: (the table, its role, the default word order)."""
    head = doc.get("profile")
    if not isinstance(head, dict):
        raise ProfileError(f"{origin}: profile: missing [profile] table")
    unknown = set(head) - _PROFILE_KEYS
    if unknown:
        raise ProfileError(f"{origin}: profile.{sorted(unknown)[0]}: unknown key")
    role = head.get("role")
    if role not in ROLES:
        raise ProfileError(f"{origin}: profile.role: must be one of {', '.join(ROLES)}")
    default_wo = head.get("word_order", "big")
    if default_wo not in ("big", "little"):
        raise ProfileError(f"{origin}: profile.word_order: must be big or little")
    return head, role, default_wo


def _parse_register(
    r: Any, where: str, default_wo: str, default_confirmed: Any, seen: set[str]
) -> Register:
    """One ``[[registers]]`` entry checked and built; ``seen`` collects the names so far."""
    if not isinstance(r, dict):
        raise ProfileError(f"{where}: must be a table")
    unknown = set(r) - _REG_KEYS
    if unknown:
        raise ProfileError(f"{where}.{sorted(unknown)[0]}: unknown key")
    name = r.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}.name: must be a non-empty string")
    if name in seen:
        raise ProfileError(f"{where}.name: duplicate register {name!r}")
    seen.add(name)
    addr = r.get("address")
    if not isinstance(addr, int) or isinstance(addr, bool) or not 0 <= addr <= 65535:
        raise ProfileError(f"{where}.address: must be an integer 0..65535")
    fn = r.get("function", "holding")
    if fn not in ("holding", "input"):
        raise ProfileError(f"{where}.function: must be holding or input")
    typ = r.get("type", "u16")
    if typ not in REG_TYPES:
        raise ProfileError(f"{where}.type: must be one of {', '.join(REG_TYPES)}")
    wo = r.get("word_order", default_wo)
    if wo not in ("big", "little"):
        raise ProfileError(f"{where}.word_order: must be big or little")
    scale = r.get("scale", 1.0)
    offset = r.get("offset", 0.0)
    for key, num in (("scale", scale), ("offset", offset)):
        if not isinstance(num, int | float) or isinstance(num, bool):
            raise ProfileError(f"{where}.{key}: must be a number")
    if scale == 0:
        raise ProfileError(f"{where}.scale: must not be 0")
    rollover = r.get("rollover")
    if rollover is not None and (
        not isinstance(rollover, int | float) or isinstance(rollover, bool) or rollover <= 0
    ):
        raise ProfileError(f"{where}.rollover: must be a positive number")
    return Register(
        name=name,
        address=addr,
        function=fn,
        type=typ,
        word_order=wo,
        scale=float(scale),
        offset=float(offset),
        unit=str(r.get("unit", "")),
        meaning=str(r.get("meaning", "")),
        range=_pair(r.get("range"), f"{where}.range"),
        raw_range=_pair(r.get("raw_range"), f"{where}.raw_range"),
        counter=bool(r.get("counter", False)),
        rollover=float(rollover) if rollover is not None else None,
        writable=bool(r.get("writable", False)),
        confirmed=bool(r.get("confirmed", default_confirmed)),
    )


def _check_overlaps(regs: list[Register], origin: str) -> None:
    """Overlapping registers within one function are a map error."""
    for fn in ("holding", "input"):
        spans = sorted((r.address, r.end, r.name) for r in regs if r.function == fn)
        for (_, e1, n1), (s2, _, n2) in itertools.pairwise(spans):
            if s2 < e1:
                raise ProfileError(f"{origin}: registers: {n1!r} overlaps {n2!r}")


def profiles_dir() -> Path:
    """The folder of shipped profiles (``firmware_cfg/profiles``): the package's folder
    (the path ``importlib.resources.files`` gives for an installed package, without that
    module's import, about 2 ms of every start-up)."""
    import firmware_cfg

    return Path(firmware_cfg.__file__).parent / "profiles"


def load_profile(name: str, search: Path | None = None) -> Profile:
    """Load profile ``name`` from ``search`` (default: the shipped profiles)."""
    folder = search if search is not None else profiles_dir()
    path = folder / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(f"no profile {name!r} in {folder}")
    return parse_profile(path.read_text(encoding="utf-8"), origin=path.name)


def available_profiles(search: Path | None = None) -> list[str]:
    """Modbus register-map profiles; ``mbus*.toml`` are M-Bus profiles (drivers.mbus_map)."""
    folder = search if search is not None else profiles_dir()
    return sorted(p.stem for p in folder.glob("*.toml") if not p.stem.startswith("mbus"))


# --- codec ---------------------------------------------------------------------------


def _words_to_bytes(words: list[int], word_order: WordOrder) -> bytes:
    ws = words if word_order == "big" else list(reversed(words))
    return b"".join(struct.pack(">H", w & 0xFFFF) for w in ws)


def _bytes_to_words(data: bytes, word_order: WordOrder) -> list[int]:
    ws = [struct.unpack(">H", data[i : i + 2])[0] for i in range(0, len(data), 2)]
    return ws if word_order == "big" else list(reversed(ws))


_STRUCT = {"u16": ">H", "s16": ">h", "u32": ">I", "s32": ">i", "f32": ">f"}


def decode_raw(reg: Register, words: list[int]) -> float:
    """Register words to the raw (unscaled) number."""
    if len(words) != reg.count:
        raise ValueError(f"{reg.name}: expected {reg.count} words, got {len(words)}")
    raw = struct.unpack(_STRUCT[reg.type], _words_to_bytes(words, reg.word_order))[0]
    return float(raw)


def decode(reg: Register, words: list[int]) -> Value:
    """Register words to a typed, scaled value with its quality."""
    raw = decode_raw(reg, words)
    if reg.raw_range is not None and not reg.raw_range[0] <= raw <= reg.raw_range[1]:
        return Value(raw * reg.scale + reg.offset, reg.unit, Quality.FAULT)
    val = raw * reg.scale + reg.offset
    if not math.isfinite(val):
        return Value(val, reg.unit, Quality.IMPLAUSIBLE)
    if reg.range is not None and not reg.range[0] <= val <= reg.range[1]:
        return Value(val, reg.unit, Quality.IMPLAUSIBLE)
    return Value(val, reg.unit, Quality.GOOD)


def encode(reg: Register, value: float) -> list[int]:
    """A scaled value to register words (inverse of ``decode``); integers are rounded
    and clamped to the type's range."""
    raw = (value - reg.offset) / reg.scale
    if reg.type == "f32":
        data = struct.pack(">f", raw)
    else:
        lo, hi = {
            "u16": (0, 0xFFFF),
            "s16": (-0x8000, 0x7FFF),
            "u32": (0, 0xFFFFFFFF),
            "s32": (-0x80000000, 0x7FFFFFFF),
        }[reg.type]
        iv = min(hi, max(lo, round(raw))) if math.isfinite(raw) else 0
        data = struct.pack(_STRUCT[reg.type], iv)
    return _bytes_to_words(data, reg.word_order)


# --- request planning ----------------------------------------------------------------


def plan_reads(
    registers: tuple[Register, ...] | list[Register],
    max_gap: int = 0,
    max_count: int = MAX_READ_REGISTERS,
) -> list[ReadBlock]:
    """Coalesce registers into as few reads as possible.

    Registers of the same function whose addresses are adjacent (or separated by at
    most ``max_gap`` unused registers) share one read of at most ``max_count``
    registers. Deterministic: blocks ordered by function, then address.
    """
    blocks: list[ReadBlock] = []
    for fn in ("holding", "input"):
        regs = sorted((r for r in registers if r.function == fn), key=lambda r: r.address)
        cur: list[Register] = []
        start = end = 0
        for r in regs:
            if cur and r.address - end <= max_gap and r.end - start <= max_count:
                cur.append(r)
                end = max(end, r.end)
                continue
            if cur:
                blocks.append(ReadBlock(fn, start, end - start, tuple(cur)))
            cur, start, end = [r], r.address, r.end
        if cur:
            blocks.append(ReadBlock(fn, start, end - start, tuple(cur)))
    return blocks


def decode_block(block: ReadBlock, words: list[int]) -> dict[str, Value]:
    """Decode every register of a block from the words the read returned."""
    if len(words) < block.count:
        raise ValueError(f"short read: {len(words)} of {block.count} registers")
    out: dict[str, Value] = {}
    for r in block.registers:
        i = r.address - block.address
        out[r.name] = decode(r, words[i : i + r.count])
    return out
