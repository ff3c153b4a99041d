"""Profile codec and request planning: pure, no I/O beyond reading shipped profiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.profile import (
    MAX_READ_REGISTERS,
    ProfileError,
    available_profiles,
    decode,
    decode_block,
    encode,
    load_profile,
    parse_profile,
    plan_reads,
)
from drivers.types import Quality

HEAD = '[profile]\nname = "t"\nrole = "heat_meter"\n'


def reg_toml(**kw: object) -> str:
    body = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in kw.items())
    return HEAD + "[[registers]]\n" + body + "\n"


def test_shipped_profiles_parse() -> None:
    names = available_profiles()
    assert {"sim-heat-meter", "sim-dp-sensor", "sim-actuator"} <= set(names)
    for n in names:
        p = load_profile(n)
        assert p.registers


@pytest.mark.parametrize(
    ("typ", "wo", "value"),
    [
        ("u16", "big", 65535),
        ("s16", "big", -12345),
        ("u32", "big", 4_000_000_000),
        ("u32", "little", 123_456_789),
        ("s32", "little", -2_000_000_000),
        ("f32", "big", 2.5),
        ("f32", "little", -0.125),
    ],
)
def test_roundtrip_types(typ: str, wo: str, value: float) -> None:
    p = parse_profile(reg_toml(name="x", address=0, type=typ, word_order=wo))
    r = p.register("x")
    words = encode(r, value)
    assert len(words) == r.count
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(r, words).value == value


def test_word_order_really_swaps() -> None:
    big = parse_profile(reg_toml(name="x", address=0, type="u32")).register("x")
    little = parse_profile(reg_toml(name="x", address=0, type="u32", word_order="little"))
    assert encode(big, 0x00010002) == [0x0001, 0x0002]
    assert encode(little.register("x"), 0x00010002) == [0x0002, 0x0001]


@given(st.integers(min_value=0, max_value=99_999_999))
def test_scaled_counter_roundtrip(raw: int) -> None:
    r = load_profile("sim-heat-meter").register("energy_kwh")
    v = raw * r.scale
    assert decode(r, encode(r, v)).value == pytest.approx(v, abs=r.scale / 2)


def test_quality_ranges_and_faults() -> None:
    hm = load_profile("sim-heat-meter")
    supply = hm.register("supply_c")
    assert decode(supply, encode(supply, 70.0)).quality is Quality.GOOD
    assert decode(supply, encode(supply, 185.0)).quality is Quality.IMPLAUSIBLE  # open sensor
    assert decode(supply, encode(supply, 0.0)).quality is Quality.IMPLAUSIBLE  # shorted
    flow = hm.register("flow_m3h")
    assert decode(flow, encode(flow, -1.0)).quality is Quality.IMPLAUSIBLE
    assert decode(flow, encode(flow, math.nan)).quality is Quality.IMPLAUSIBLE
    dp = load_profile("sim-dp-sensor").register("dp_kpa")
    assert decode(dp, [12000]).value == pytest.approx(200.0)
    assert decode(dp, [3000]).quality is Quality.FAULT  # 3 mA: broken loop
    assert decode(dp, [22000]).quality is Quality.FAULT


def test_plan_coalesces_adjacent_and_respects_limit() -> None:
    regs = "".join(
        f'[[registers]]\nname = "r{i}"\naddress = {i * 2}\ntype = "u32"\n' for i in range(100)
    )
    p = parse_profile(HEAD + regs)
    blocks = plan_reads(p.registers)
    assert sum(b.count for b in blocks) == 200
    assert all(b.count <= MAX_READ_REGISTERS for b in blocks)
    assert len(blocks) == 2  # 200 contiguous registers need exactly two reads
    # a u32 is never split across two reads
    for b in blocks:
        assert all(b.address <= r.address and r.end <= b.address + b.count for r in b.registers)


def test_plan_separates_functions_and_gaps() -> None:
    hm = load_profile("sim-heat-meter")
    assert len(plan_reads(hm.registers, max_gap=0)) > len(plan_reads(hm.registers, hm.max_gap))
    act = load_profile("sim-actuator")
    fns = [b.function for b in plan_reads(act.registers)]
    assert fns == ["holding", "input"]


def test_decode_block_offsets() -> None:
    hm = load_profile("sim-heat-meter")
    blocks = plan_reads(hm.registers, hm.max_gap)
    b = next(b for b in blocks if any(r.name == "energy_kwh" for r in b.registers))
    words = [0] * b.count
    e = hm.register("energy_kwh")
    i = e.address - b.address
    words[i : i + 2] = encode(e, 12345.6)
    assert decode_block(b, words)["energy_kwh"].value == pytest.approx(12345.6)
    with pytest.raises(ValueError, match="short read"):
        decode_block(b, words[:-1])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[profile]\nrole = 'x'\n", "profile.role"),
        (HEAD, "registers: at least one"),
        (reg_toml(name="x", address=70000), "registers[0].address"),
        (reg_toml(name="x", address=0, type="u64"), "registers[0].type"),
        (reg_toml(name="x", address=0, bogus=1), "registers[0].bogus: unknown key"),
        (reg_toml(name="x", address=0, scale=0), "registers[0].scale"),
        (
            HEAD
            + '[[registers]]\nname = "a"\naddress = 0\ntype = "u32"\n'
            + '[[registers]]\nname = "b"\naddress = 1\n',
            "overlaps",
        ),
    ],
)
def test_bad_profiles_name_their_path(text: str, fragment: str) -> None:
    with pytest.raises(ProfileError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(text)
