"""Pure parts of the drivers: CRC, RTU framing, response checks, health rule, profile."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.device import (
    BACKOFF_MAX_S,
    BACKOFF_S,
    BlockDecoder,
    backoff_s,
)
from drivers.health import OFFLINE_AFTER, OFFLINE_AFTER_S, HealthState, next_health
from drivers.modbus import (
    CrcError,
    ExceptionResponse,
    FrameError,
    check_response,
    crc16,
    read_pdu,
    response_length,
    rtu_frame,
    words_of,
    write_pdu,
)
from drivers.profile import (
    available_profiles,
    decode_block,
    load_profile,
    parse_profile,
    plan_reads,
)
from drivers.types import Health, Value
from simulator.rtu import crc16 as sim_crc16


def test_crc16_known_vector() -> None:
    # read holding 0, count 1, unit 1: the classic frame 01 03 00 00 00 01 84 0A
    assert rtu_frame(1, read_pdu("holding", 0, 1)).hex() == "010300000001840a"


@given(st.binary(max_size=300))
def test_crc16_matches_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == sim_crc16(data)


def test_response_length_by_function_code() -> None:
    assert response_length(b"") is None
    assert response_length(b"\x01") is None
    assert response_length(b"\x01\x83") == 5
    assert response_length(b"\x01\x03") is None
    assert response_length(b"\x01\x03\x04") == 9
    assert response_length(b"\x01\x04\xfa") == 255
    assert response_length(b"\x01\x06") == 8
    assert response_length(b"\x01\x10") == 8
    assert response_length(b"\x01\x2b") == -1


def _answer(unit: int, pdu: bytes, corrupt: bool = False) -> bytes:
    f = rtu_frame(unit, pdu)
    return f[:-1] + bytes([f[-1] ^ 0xFF]) if corrupt else f


def test_check_response_good_read() -> None:
    req = read_pdu("input", 10, 2)
    pdu = check_response(3, req, _answer(3, struct.pack(">BBHH", 4, 4, 0x1234, 0xBEEF)))
    assert words_of(pdu) == [0x1234, 0xBEEF]


def test_check_response_errors() -> None:
    req = read_pdu("holding", 0, 2)
    good = struct.pack(">BBHH", 3, 4, 1, 2)
    with pytest.raises(CrcError):
        check_response(1, req, _answer(1, good, corrupt=True))
    with pytest.raises(FrameError, match="unit 2"):
        check_response(1, req, _answer(2, good))
    with pytest.raises(FrameError, match="function"):
        check_response(1, req, _answer(1, b"\x04" + good[1:]))
    with pytest.raises(FrameError, match="bytes"):
        check_response(1, req, _answer(1, struct.pack(">BBH", 3, 2, 1)))
    with pytest.raises(ExceptionResponse) as ei:
        check_response(1, req, _answer(1, b"\x83\x02"))
    assert ei.value.code == 2 and not ei.value.retryable and ei.value.kind == "exceptions"
    with pytest.raises(ExceptionResponse) as ei:
        check_response(1, req, _answer(1, b"\x83\x06"))
    assert ei.value.retryable


def test_write_pdus_and_echo_checks() -> None:
    one = write_pdu(5, [0x0102])
    assert one == bytes.fromhex("0600050102")
    assert check_response(1, one, _answer(1, one)) == one
    with pytest.raises(FrameError):
        check_response(1, one, _answer(1, bytes.fromhex("0600050103")))
    many = write_pdu(8, [1, 2])
    assert many == bytes.fromhex("1000080002040001" + "0002")
    check_response(1, many, _answer(1, bytes.fromhex("1000080002")))
    with pytest.raises(FrameError):
        check_response(1, many, _answer(1, bytes.fromhex("1000090002")))


# --- health rule --------------------------------------------------------------------------


def _run(outcomes: list[tuple[bool, float]], t0: float = 0.0) -> list[Health]:
    s = HealthState(Health.OFFLINE, 0, t0)
    out = []
    for ok, t in outcomes:
        s = next_health(s, ok, t)
        out.append(s.health)
    return out


def test_health_rule_counts_consecutive_failures() -> None:
    seq = [(True, 1.0), (False, 2.0), (False, 3.0), (False, 4.0), (False, 5.0), (True, 6.0)]
    assert OFFLINE_AFTER == 3
    assert _run(seq) == [
        Health.OK,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.OFFLINE,
        Health.OFFLINE,
        Health.OK,
    ]


def test_health_rule_offline_after_silence() -> None:
    # one failure, but the last success is longer ago than OFFLINE_AFTER_S
    assert _run([(True, 0.0), (False, OFFLINE_AFTER_S + 1)]) == [Health.OK, Health.OFFLINE]
    # never succeeded: counts from creation
    assert _run([(False, OFFLINE_AFTER_S + 5)], t0=0.0) == [Health.OFFLINE]
    assert _run([(False, 1.0)], t0=0.0) == [Health.DEGRADED]


def test_health_success_resets_failures() -> None:
    seq = [(False, 1.0), (False, 2.0), (True, 3.0), (False, 4.0), (False, 5.0)]
    assert _run(seq)[-1] is Health.DEGRADED


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff_s(i) for i in range(1, 10)]
    assert waits[0] == BACKOFF_S > 0
    # each pause doubles the one before until the cap, then stays there
    assert waits == [min(BACKOFF_S * 2 ** (i - 1), BACKOFF_MAX_S) for i in range(1, 10)]
    assert waits[1] == 2 * waits[0] and waits[-1] == BACKOFF_MAX_S <= 1.0


# --- the Kamstrup profile -------------------------------------------------------------------


def test_kamstrup_profile_parses_and_marks_unconfirmed() -> None:
    p = load_profile("kamstrup-multical-603")
    assert p.role == "heat_meter" and not p.confirmed
    by = {r.name: r for r in p.registers}
    # register N at address N-1: flow V1 = register 1 = address 0, t1 = register 7 = 6
    assert by["flow_m3h"].address == 0x0000 and by["flow_m3h"].type == "f32"
    assert by["power_kw"].address == 0x0004
    assert by["supply_c"].address == 0x0006 and by["return_c"].address == 0x0008
    assert all(by[n].confirmed for n in ("flow_m3h", "power_kw", "supply_c", "return_c"))
    assert not by["energy_kwh"].confirmed and not by["volume_m3"].confirmed
    blocks = plan_reads(p.registers, p.max_gap)
    # the confirmed values in one read, the unconfirmed guesses in another
    assert [(b.address, b.count) for b in blocks] == [(0, 10), (0x40, 6)]
    assert all(r.confirmed for r in blocks[0].registers)


# --- the precompiled block decoder equals the reference codec --------------------------------

_LITTLE = """
[profile]
name = "le"
role = "heat_meter"
word_order = "little"
max_gap = 3
[[registers]]
name = "energy_kwh"
address = 0
type = "u32"
range = [0, 1000]
[[registers]]
name = "flow_m3h"
address = 4
type = "f32"
word_order = "big"
range = [0, 10]
"""


def _same(a: dict[str, Value], b: dict[str, Value]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.unit != y.unit or x.quality is not y.quality:
            return False
        if not (x.value == y.value or (math.isnan(x.value) and math.isnan(y.value))):
            return False
    return True


_PROFILES = [load_profile(n) for n in available_profiles()] + [parse_profile(_LITTLE)]
_BLOCKS = [b for p in _PROFILES for b in plan_reads(p.registers, p.max_gap)]


@given(st.data())
def test_block_decoder_equals_decode_block(data: st.DataObject) -> None:
    block = data.draw(st.sampled_from(_BLOCKS))
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
    assert _same(BlockDecoder(block)(words), decode_block(block, words))


@given(st.data())
def test_block_decoder_reused_across_polls_equals_decode_block(data: st.DataObject) -> None:
    """One decoder over several polls (as a Device uses it): registers whose raw value did
    not change get the previous Value back, which must still equal a fresh decode; the
    count of values not GOOD matches too."""
    block = data.draw(st.sampled_from(_BLOCKS))
    dec = BlockDecoder(block)
    first = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
    for _ in range(4):
        # change a few words of the previous poll, keep the rest
        words = list(first)
        for i in data.draw(st.lists(st.integers(0, block.count - 1), max_size=3)):
            words[i] = data.draw(st.integers(0, 0xFFFF))
        out: dict[str, Value] = {}
        bad = dec.into(words, out)
        want = decode_block(block, words)
        assert _same(out, want)
        assert bad == sum(1 for v in want.values() if not v.good)
        first = words


def test_block_decoder_covers_fast_and_fallback_paths() -> None:
    fast = [BlockDecoder(b).fast for b in _BLOCKS]
    assert any(fast) and not all(fast)
    with pytest.raises(ValueError, match="short read"):
        BlockDecoder(_BLOCKS[0])([0])
