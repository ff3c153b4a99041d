"""Properties of the M-Bus codec: random record sets survive encode/decode; mutated real
frames only ever raise the decoder's own errors, in a bounded number of steps, and a
frame failing its checksum never yields values."""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drivers.mbus_app import (
    Header,
    MbusApplicationError,
    MbusDecodeError,
    Record,
    Telegram,
    decode_user_data,
    encode_user_data,
)
from drivers.mbus_frame import C_RSP_UD, Frame, MbusFrameError, long_frame, parse_frame

DATA = Path(__file__).parent / "data" / "mbus"

# --- an independent little VIF table: (vif, vifes) -> quantity, unit, exp, factor -------


@dataclass(frozen=True)
class Kind:
    vif: int
    vifes: tuple[int, ...]
    quantity: str
    unit: str
    exp: int
    factor: int = 1


def _kinds() -> list[Kind]:
    ks: list[Kind] = []
    for n in range(8):
        ks.append(Kind(0x00 + n, (), "energy", "Wh", n - 3))
        ks.append(Kind(0x08 + n, (), "energy", "J", n))
        ks.append(Kind(0x10 + n, (), "volume", "m3", n - 6))
        ks.append(Kind(0x28 + n, (), "power", "W", n - 3))
        ks.append(Kind(0x38 + n, (), "volume_flow", "m3/h", n - 6))
        ks.append(Kind(0x50 + n, (), "mass_flow", "kg/h", n - 3))
    for n in range(4):
        ks.append(Kind(0x58 + n, (), "flow_temp", "C", n - 3))
        ks.append(Kind(0x5C + n, (), "return_temp", "C", n - 3))
        ks.append(Kind(0x60 + n, (), "temp_diff", "K", n - 3))
        ks.append(Kind(0x68 + n, (), "pressure", "bar", n - 3))
        ks.append(Kind(0x20 + n, (), "on_time", "s", 0, (1, 60, 3600, 86400)[n]))
    for n in range(2):
        ks.append(Kind(0xFB, (0x00 + n,), "energy", "Wh", n + 5))  # 10^(n-1) MWh
        ks.append(Kind(0xFB, (0x08 + n,), "energy", "J", n + 8))  # 10^(n-1) GJ
        ks.append(Kind(0xFB, (0x10 + n,), "volume", "m3", n + 2))
    for m in range(8):  # energy in kWh with a multiplicative correction 10^(m-6)
        ks.append(Kind(0x86, (0x70 + m,), "energy", "Wh", m - 6 + 3))
    ks.append(Kind(0x78, (), "fabrication_no", "", 0))
    ks.append(Kind(0xFD, (0x17,), "error_flags", "", 0))
    ks.append(Kind(0xA2, (0x22,), "on_time_rate", "s/h", 0, 3600))  # hours, per hour
    return ks


KINDS = _kinds()
INT_TYPES = {0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x6: 6, 0x7: 8}
BCD_TYPES = {0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6}
FUNCTIONS = ("instantaneous", "maximum", "minimum", "error")


def expected_value(raw: int | float, k: Kind) -> float:
    return float(raw) * k.factor * 10.0**k.exp


@st.composite
def numeric_record(draw: st.DrawFn) -> tuple[Record, float, Kind]:
    k = draw(st.sampled_from(KINDS))
    family = draw(st.sampled_from(("int", "bcd", "real")))
    raw: int | float
    if family == "int":
        dtype = draw(st.sampled_from(sorted(INT_TYPES)))
        bits = 8 * INT_TYPES[dtype]
        if k.exp < 0:  # the value is a float then: keep the raw number within its 53 bits
            bits = min(bits, 53)
        raw = draw(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    elif family == "bcd":
        dtype = draw(st.sampled_from(sorted(BCD_TYPES)))
        digits = 2 * BCD_TYPES[dtype]
        raw = draw(st.integers(-(10 ** (digits - 1) - 1), 10**digits - 1))
    else:
        dtype = 0x5
        raw = struct.unpack("<f", struct.pack("<f", draw(st.floats(-1e6, 1e6))))[0]
    want = expected_value(raw, k)
    value: int | float = want
    if family != "real" and k.exp >= 0:
        value = int(raw) * k.factor * 10**k.exp  # exact integers stay integers
    rec = Record(
        dif=dtype,
        vif=k.vif,
        storage=draw(st.integers(0, 2**20)),
        tariff=draw(st.integers(0, 15)),
        subunit=draw(st.integers(0, 3)),
        function=draw(st.sampled_from(FUNCTIONS)),
        quantity=k.quantity,
        value=value,
        unit=k.unit,
        error_state=False,
        raw=b"",
        vifes=k.vifes,
    )
    return rec, want, k


@st.composite
def other_record(draw: st.DrawFn) -> tuple[Record, Any, Kind]:
    choice = draw(st.sampled_from(("date", "datetime", "datetime_s", "text", "none")))
    if choice == "date":
        y, m, d = draw(st.integers(2000, 2127)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
        dtype, vif, value, kind = (
            0x2,
            0x6C,
            f"{y:04d}-{m:02d}-{d:02d}",
            Kind(0x6C, (), "date", "", 0),
        )
    elif choice in ("datetime", "datetime_s"):
        y, m, d = draw(st.integers(1981, 2127)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
        hh, mm, ss = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
        if choice == "datetime":
            dtype, value = 0x4, f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}"
        else:
            y = max(y, 2000)
            dtype, value = 0x6, f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
        vif, kind = 0x6D, Kind(0x6D, (), "datetime", "", 0)
    elif choice == "text":
        text = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
        dtype, vif, value, kind = 0xD, 0x78, text, Kind(0x78, (), "fabrication_no", "", 0)
    else:
        dtype, vif, value, kind = 0x0, 0x13, None, Kind(0x13, (), "volume", "m3", -3)
    rec = Record(
        dif=dtype,
        vif=vif,
        storage=draw(st.integers(0, 40)),
        tariff=0,
        subunit=0,
        function="instantaneous",
        quantity=kind.quantity,
        value=value,
        unit=kind.unit,
        error_state=False,
        raw=b"",
    )
    return rec, value, kind


HEADERS = st.builds(
    Header,
    id=st.text("0123456789", min_size=8, max_size=8),
    manufacturer=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3),
    version=st.integers(0, 255),
    medium=st.integers(0, 255),
    access=st.integers(0, 255),
    status=st.integers(0, 255),
    signature=st.integers(0, 0xFFFF),
)


def decode_frame(raw: bytes) -> Telegram:
    frame = parse_frame(raw)
    assert isinstance(frame, Frame) and frame.ci is not None
    return decode_user_data(frame.ci, frame.data)


@settings(max_examples=300, deadline=None)
@given(
    header=HEADERS,
    items=st.lists(st.one_of(numeric_record(), other_record()), max_size=12),
    mdata=st.binary(max_size=20),
    more=st.booleans(),
)
def test_encode_then_decode_gives_the_records_back(
    header: Header, items: list[tuple[Record, Any, Kind]], mdata: bytes, more: bool
) -> None:
    records = [rec for rec, _, _ in items]
    data = encode_user_data(header, records, mdata, more)
    assume(len(data) <= 252)  # one long frame carries at most 252 bytes of user data
    t = decode_frame(long_frame(C_RSP_UD, 1, 0x72, data))
    assert t.header == header
    assert t.more_follows is more
    assert t.manufacturer_data == (mdata if more or mdata else b"")
    assert len(t.records) == len(records)
    for got, (rec, want, kind) in zip(t.records, items, strict=True):
        assert (got.storage, got.tariff, got.subunit) == (rec.storage, rec.tariff, rec.subunit)
        assert got.function == rec.function
        assert got.error_state is (rec.function == "error")
        assert (got.quantity, got.unit) == (kind.quantity, kind.unit)
        if isinstance(want, float):
            assert isinstance(got.value, int | float)
            assert math.isclose(got.value, want, rel_tol=1e-9, abs_tol=1e-12), (got, want)
        else:
            assert got.value == want


# --- fuzz ----------------------------------------------------------------------------------


def real_frames() -> list[bytes]:
    out = []
    for name in ("libmbus.json", "wmbusmeters.json", "pymeterbus.json"):
        doc = json.loads((DATA / name).read_text(encoding="utf-8"))
        out += [bytes.fromhex(f["hex"]) for f in doc["frames"]]
    return [f for f in out if f[0] == 0x68 and f[6] in (0x72, 0x7A, 0x78)]


FRAMES = real_frames()
ALLOWED = (MbusFrameError, MbusDecodeError, MbusApplicationError)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    op = rng.randrange(5)
    if op == 0:
        return bytes(b[: rng.randrange(len(b))])
    if op == 1:
        del b[rng.randrange(4, len(b))]
    elif op == 2:
        b.insert(rng.randrange(4, len(b)), rng.randrange(256))
    else:
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.choice(
                (0x00, 0xFF, 0x0F, 0x1F, 0x2F, 0x8D, rng.randrange(256))
            )
    return bytes(b)


def reframe(rng: random.Random, frame: bytes) -> bytes:
    """Mutate the user data only, then make L and the checksum right again, so the
    application layer sees the damage."""
    body = bytearray(frame[4:-2])
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(3, len(body))
        op = rng.randrange(4)
        if op == 0:
            del body[i:]
            break
        if op == 1:
            del body[i]
        elif op == 2:
            body[i] = rng.choice((0x0D, 0x8D, 0xFD, 0xFB, 0xFC, 0x7C, 0xFF, 0xBF, 0xF6))
        else:
            body[i] = rng.randrange(256)
    body = body[:255]
    if len(body) < 3:
        body = bytearray(frame[4:7])
    return long_frame(body[0], body[1], body[2], bytes(body[3:]))


def test_fuzz_mutated_real_frames_raise_only_decoder_errors() -> None:
    rng = random.Random(13757)
    decoded = rejected = 0
    for n in range(3000):
        frame = rng.choice(FRAMES)
        raw = reframe(rng, frame) if n % 2 else mutate(rng, frame)
        try:
            t = decode_frame(raw)
        except ALLOWED:
            rejected += 1
            continue
        decoded += 1
        # bounded by content: every record takes at least two bytes of the frame
        assert 2 * len(t.records) <= len(raw) - 9
    assert decoded > 100 and rejected > 1000  # both paths were exercised


def test_fuzz_steps_are_bounded_by_the_frame_length() -> None:
    """Count the interpreter's line events inside the decoder: linear in the bytes."""
    rng = random.Random(7)
    worst = 0.0
    for _ in range(300):
        raw = reframe(rng, rng.choice(FRAMES))
        steps = 0

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            nonlocal steps
            if event == "line":
                steps += 1
            return tracer

        sys.settrace(tracer)
        try:
            decode_frame(raw)
        except ALLOWED:
            pass
        finally:
            sys.settrace(None)
        worst = max(worst, steps / len(raw))
    assert worst < 60, worst


def test_a_frame_failing_its_checksum_never_yields_values() -> None:
    rng = random.Random(2)
    for frame in FRAMES:
        for _ in range(20):
            b = bytearray(frame)
            i = rng.randrange(4, len(b) - 2)  # C .. data
            b[i] = (b[i] + rng.randrange(1, 256)) & 0xFF
            if sum(b[4:-2]) & 0xFF == b[-2]:
                continue  # the damage happens to keep the sum: not a checksum failure
            try:
                decode_frame(bytes(b))
            except MbusFrameError as e:
                assert "checksum" in str(e)
            else:
                raise AssertionError("a frame with a wrong checksum was decoded")


# bytes that steer the decoder into its rarer paths: extensions, LVAR, specials
SPECIAL = (0x0D, 0x8D, 0x0F, 0x1F, 0x2F, 0x7C, 0xFC, 0x7F, 0xFF, 0xFB, 0xFD, 0x6C, 0x6D)
LVARS = (0x80, 0xBF, 0xC0, 0xC5, 0xD0, 0xD3, 0xE0, 0xEF, 0xF0, 0xF4, 0xF5, 0xF6, 0xF7)
TRICKY = st.sampled_from((*SPECIAL, *LVARS, 0x05, 0x0E, 0x09))


@settings(max_examples=1500, deadline=None)
@given(
    ci=st.sampled_from((0x72, 0x7A, 0x78, 0x70, 0x73)),
    data=st.lists(st.one_of(TRICKY, st.integers(0, 255)), max_size=120).map(bytes),
)
def test_random_user_data_raises_only_decode_errors(ci: int, data: bytes) -> None:
    try:
        t = decode_user_data(ci, data)
    except MbusDecodeError:  # MbusApplicationError is one too
        return
    assert 2 * len(t.records) <= len(data)
    for r in t.records:
        assert r.raw and r.raw in data
