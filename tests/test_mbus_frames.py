"""Real meters' M-Bus frames decode to the values their public sources publish.

Data: ``tests/data/mbus/`` (see its README for the origin of every frame):
libmbus frames with its normalised XML output, wmbusmeters' wired M-Bus simulation
telegrams with its JSON output, pyMeterBus' test frames with its assertions, and the
error frames of libmbus and pyMeterBus.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from drivers.mbus_app import (
    MbusApplicationError,
    MbusDecodeError,
    Record,
    Telegram,
    decode_user_data,
)
from drivers.mbus_frame import (
    ADDR_BROADCAST,
    ADDR_SELECTED,
    ADDR_TEST,
    C_FCB,
    C_FCV,
    C_REQ_UD2,
    C_REQ_UD2_FCB,
    C_SND_NKE,
    C_SND_UD,
    C_SND_UD_FCB,
    CI_SELECT,
    Ack,
    Frame,
    MbusFrameError,
    frame_length,
    long_frame,
    parse_frame,
    req_ud2,
    select_secondary,
    select_secondary_data,
    short_frame,
    snd_nke,
)

DATA = Path(__file__).parent / "data" / "mbus"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return doc


def decode_hex(text: str) -> Telegram:
    frame = parse_frame(bytes.fromhex(text))
    assert isinstance(frame, Frame) and frame.ci is not None
    assert frame.is_rsp_ud()
    return decode_user_data(frame.ci, frame.data)


# --- libmbus -------------------------------------------------------------------------------

LIBMBUS = load("libmbus.json")
LIB_FUNCTIONS = {
    "Instantaneous value": "instantaneous",
    "Maximum value": "maximum",
    "Minimum value": "minimum",
    "Value during error state": "error",
}
LIB_QUANTITIES = {
    "Energy": "energy",
    "Volume": "volume",
    "Power": "power",
    "Time point (date)": "date",
    "Time point (date & time)": "datetime",
    "Volume flow": "volume_flow",
    "Return temperature": "return_temp",
    "Flow temperature": "flow_temp",
    "Temperature difference": "temp_diff",
    "External temperature": "external_temp",
    "Fabrication No": "fabrication_no",
    "(Enhanced) Identification": "enhanced_id",
    "Voltage": "voltage",
    "Current": "current",
    "Manufacturer specific": "manufacturer_specific",
    "Operating time": "operating_time",
    "On time": "on_time",
    "Averaging Duration": "averaging_duration",
    "Actuality Duration": "actuality_duration",
    "Error flags": "error_flags",
    "Software version": "software_version",
    "Firmware version": "firmware_version",
    "Model / Version": "model_version",
    "Parameter set identification": "parameter_set_id",
    "Dimensionless": "dimensionless",
    "H.C.A.": "hca_units",
    "Customer location": "customer_location",
    "Digital Input": "digital_input",
    "Digital Output": "digital_output",
    "Medium": "medium",
    "Special supplier information": "supplier_info",
    "Reset counter": "reset_counter",
    "Reserved": "reserved",
}
LIB_UNITS = {"Wh": "Wh", "J": "J", "m^3": "m3", "W": "W", "°C": "C", "K": "K"}
LIB_UNITS.update({"m^3/h": "m3/h", "s": "s", "V": "V", "A": "A"})
# libmbus reads the non-decimal BCD digits of these error-state records as numbers;
# we give no value (None): a number made of hex nibbles is not a reading.
NON_DECIMAL_BCD = {("ELS_Elster-F96-Plus", 4), ("ELS_Elster-F96-Plus", 5)}
NON_DECIMAL_BCD |= {("abb_f95", 2), ("abb_f95", 3)}
FIXED_STRUCTURE = {"manual_frame2", "sen_pollusonic_2"}  # CI 0x73: not decoded


def check_value(name: str, i: int, lib: dict[str, str], rec: Record) -> None:
    text = lib["Value"]
    if (name, i) in NON_DECIMAL_BCD:
        assert rec.value is None
        return
    if text == "1900-01-00T00:00:00Z":  # libmbus' output for a time flagged invalid
        assert rec.value is None
        return
    if isinstance(rec.value, bytes):  # binary LVAR: libmbus prints it reversed
        assert rec.value[::-1].hex(" ").upper() == text
        return
    if isinstance(rec.value, str):
        if text.endswith("Z"):  # libmbus: seconds always, and a Z; type F has no seconds
            mine = rec.value if len(rec.value) > 16 else rec.value + ":00"
            assert mine == text[:-1]
        else:
            assert rec.value == text
        return
    assert isinstance(rec.value, int | float), (name, i, rec)
    assert math.isclose(rec.value, float(text), rel_tol=1e-9, abs_tol=1e-6), (name, i, rec)


def check_record(name: str, i: int, lib: dict[str, str], rec: Record) -> None:
    if "Function" not in lib:  # libmbus could not describe it (reserved VIF 0x7B)
        assert rec.quantity == "reserved"
        return
    assert rec.function == LIB_FUNCTIONS[lib["Function"]]
    assert rec.storage == int(lib["StorageNumber"])
    assert rec.tariff == int(lib.get("Tariff", "0"))
    assert rec.subunit == int(lib.get("Device", "0"))
    quantity = LIB_QUANTITIES.get(lib["Quantity"])
    if quantity is None:  # a plain-text VIF: libmbus shows the text as the quantity
        assert rec.quantity == "plain_text" and rec.unit == lib["Quantity"]
    else:
        # VIFEs we do not fold into the number (limits, per-pulse...) extend the name
        assert rec.quantity.startswith(quantity), (name, i, rec)
        unit = LIB_UNITS.get(lib["Unit"])
        if unit is not None:
            assert rec.unit.startswith(unit)
    check_value(name, i, lib, rec)


@pytest.mark.parametrize("frame", LIBMBUS["frames"], ids=lambda f: f["name"])
def test_libmbus_frame(frame: dict[str, Any]) -> None:
    name = frame["name"]
    if name in FIXED_STRUCTURE:
        with pytest.raises(MbusDecodeError, match="unsupported CI field 0x73"):
            decode_hex(frame["hex"])
        return
    t = decode_hex(frame["hex"])
    slave = frame["slave"]
    assert t.header is not None
    # libmbus prints the id as a number (no leading zeros), or as text when not BCD
    assert t.header.id.lstrip("0") == slave["Id"].lstrip("0")
    assert t.header.manufacturer == slave["Manufacturer"]
    assert t.header.version == int(slave["Version"])
    assert t.access == int(slave["AccessNumber"])
    assert t.status == int(slave["Status"], 16)
    assert t.header.signature == int(slave["Signature"], 16)
    special = [
        r
        for r in frame["records"]
        if r.get("Function") in ("Manufacturer specific", "More records follow")
    ]
    plain = [r for r in frame["records"] if r not in special]
    assert len(t.records) == len(plain)
    for i, (lib, rec) in enumerate(zip(plain, t.records, strict=True)):
        check_record(name, i, lib, rec)
    assert t.more_follows == any(r["Function"] == "More records follow" for r in special)
    manufacturer = [r for r in special if r["Function"] == "Manufacturer specific"]
    if manufacturer:
        assert t.manufacturer_data.hex(" ").upper() == manufacturer[0]["Value"]


def test_libmbus_covers_enough_real_heat_meters() -> None:
    heat = {
        f["slave"].get("Manufacturer") for f in LIBMBUS["frames"] if "Heat" in f["slave"]["Medium"]
    }
    assert {"KAM", "LUG", "EFE", "SEN", "SON", "ACW", "ELS", "ZRM", "HYD"} <= heat


ERRORS = load("libmbus_errors.json")
APP_ERRORS = {
    "application_busy": 8,
    "buffer_too_long": 2,
    "premature_end_of_record": 4,
    "too_many_difes": 5,
    "too_many_readouts": 9,
    "too_many_records": 3,
    "too_many_vifes": 6,
    "unimplemented_ci": 1,
    "unspecified_error": 0,
    "error": None,
}


def decode_any(raw: bytes) -> Telegram | Ack:
    frame = parse_frame(raw)
    if isinstance(frame, Ack):
        return frame
    return decode_user_data(frame.ci if frame.ci is not None else -1, frame.data)


@pytest.mark.parametrize("frame", ERRORS["frames"], ids=lambda f: f["name"])
def test_libmbus_error_frames_are_rejected(frame: dict[str, Any]) -> None:
    name = frame["name"]
    try:
        raw = bytes.fromhex(frame["text"])
    except ValueError:
        return  # manual_frame1 is not even hex: nothing reaches the decoder
    if name in APP_ERRORS:
        with pytest.raises(MbusApplicationError) as e:
            decode_any(raw)
        assert e.value.code == APP_ERRORS[name]
    elif name == "svm_f22_telegram2":
        # a valid frame holding only a manufacturer block with "more records follow"
        t = decode_any(raw)
        assert isinstance(t, Telegram) and t.records == () and t.more_follows
        assert len(t.manufacturer_data) > 100
    else:
        with pytest.raises((MbusFrameError, MbusDecodeError)):
            decode_any(raw)


# --- wmbusmeters -------------------------------------------------------------------------

WMBUS = load("wmbusmeters.json")


def select(t: Telegram, sel: dict[str, Any]) -> Record:
    for r in t.records:
        if (
            r.quantity == sel["quantity"]
            and r.storage == sel["storage"]
            and r.tariff == sel["tariff"]
            and r.subunit == sel["subunit"]
            and r.function == sel["function"]
            and ("vifes" not in sel or list(r.vifes) == sel["vifes"])
        ):
            return r
    raise AssertionError(f"no record {sel}")


@pytest.mark.parametrize("frame", WMBUS["frames"], ids=lambda f: f["name"])
def test_wmbusmeters_frame(frame: dict[str, Any]) -> None:
    t = decode_hex(frame["hex"])
    theirs = frame["wmbusmeters_json"]
    assert t.header is not None and t.header.id == theirs["id"]
    for e in frame["expect"]:
        rec = select(t, e["select"])
        want = theirs[e["field"]]
        conv = e["convert"]
        if conv == "datetime":
            assert rec.value == want.replace(" ", "T")
        elif conv == "date":
            assert rec.value == want
        elif conv == "hex_int":
            assert rec.value == int(want, 16)
        elif conv == "dec_int":
            assert rec.value == int(want)
        else:
            assert isinstance(rec.value, int | float)
            assert math.isclose(rec.value, want * conv, rel_tol=1e-6), (e, rec)


def test_wmbusmeters_status_words() -> None:
    """wmbusmeters: SensoStar "ALARM POWER_LOW ...", the others "OK"."""
    by_name = {f["name"]: decode_hex(f["hex"]) for f in WMBUS["frames"]}
    assert by_name["sensostar"].status & 0x07 == 0x07  # application error bits + power low
    assert by_name["ultraheat"].status == 0
    assert by_name["multical403"].status == 0


# --- pyMeterBus ----------------------------------------------------------------------------

PYMBUS = load("pymeterbus.json")
PY_UNITS = {"Wh": "Wh", "m^3": "m3", "m^3/h": "m3/h", "W": "W", "C": "C", "K": "K"}
PY_UNITS.update({"none": "", "seconds": "s", "%RH": "%RH", "%": "%", "dBm": "dBm"})


@pytest.mark.parametrize("frame", PYMBUS["frames"], ids=lambda f: f["name"])
def test_pymeterbus_frame(frame: dict[str, Any]) -> None:
    t = decode_hex(frame["hex"])
    markers = [e for e in frame["expected"] if "DIF" in e.get("deviation", "")]
    assert len(t.records) == frame["record_count"] - len(markers)
    for e in frame["expected"]:
        i = e["index"]
        why = e.get("deviation", "")
        if "more records follow" in why:
            assert t.more_follows and i == len(t.records)
            continue
        if "manufacturer data" in why:
            assert t.manufacturer_data == bytes.fromhex(e["parsed_value"])
            continue
        rec = t.records[i]
        if "not decimal" in why or "same as" in why:
            assert rec.value is None and rec.error_state
            continue
        assert rec.unit == PY_UNITS[e["unit"]]
        if "not compared" in why:
            continue
        assert isinstance(rec.value, int | float)
        assert math.isclose(rec.value, e["parsed_value"], rel_tol=1e-9, abs_tol=1e-9), (i, rec)


@pytest.mark.parametrize("frame", PYMBUS["error_frames"], ids=lambda f: f["name"])
def test_pymeterbus_error_frames(frame: dict[str, Any]) -> None:
    with pytest.raises(MbusFrameError, match=frame["why"]):
        decode_any(bytes.fromhex(frame["hex"]))


def test_sources_and_meter_count() -> None:
    """At least 20 real meters from three independent sources."""
    real = [
        f
        for f in LIBMBUS["frames"]
        if not f["name"].startswith(("example", "manual")) and f["name"] not in FIXED_STRUCTURE
    ]
    ids = {(f["slave"]["Manufacturer"], f["slave"]["Id"]) for f in real}
    assert len(ids) >= 20
    assert len(WMBUS["frames"]) == 3 and len(PYMBUS["frames"]) >= 3
    sources = {LIBMBUS["source"], WMBUS["source"], PYMBUS["source"]}
    assert len(sources) == 3


# --- link layer (EN 13757-2) ---------------------------------------------------------------


def test_short_frame_and_its_checksum() -> None:
    assert short_frame(C_REQ_UD2, 1) == bytes.fromhex("105B015C16")
    assert snd_nke(0xFE) == bytes.fromhex("1040FE3E16")
    assert req_ud2(5, fcb=True) == bytes.fromhex("107B058016")
    f = parse_frame(bytes.fromhex("105B015C16"))
    assert f == Frame(c=0x5B, a=1) and not f.is_long


def test_ack_and_control_frame() -> None:
    assert parse_frame(b"\xe5") == Ack()
    # pyMeterBus tests/test_control_frame.py: a control frame (L = 3, no data)
    f = parse_frame(bytes.fromhex("68 03 03 68 08 0B 72 85 16"))
    assert f == Frame(c=0x08, a=0x0B, ci=0x72, data=b"")
    assert long_frame(0x08, 0x0B, 0x72) == bytes.fromhex("68 03 03 68 08 0B 72 85 16")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "cut short"),
        ("6803", "cut short"),
        ("10 5B 01 5C", "cut short"),
        ("10 5B 01 5D 16", "checksum"),
        ("10 5B 01 5C 17", "missing stop"),
        ("68 03 04 68 08 0B 72 85 16", "length mismatch"),
        ("68 02 02 68 08 0B 13 16", "too small"),
        ("68 03 03 67 08 0B 72 85 16", "second start"),
        ("68 03 03 68 08 0B 72 85 16 16", "trailing"),
        ("42", "bad start"),
    ],
)
def test_bad_frames_say_why(raw: str, reason: str) -> None:
    with pytest.raises(MbusFrameError, match=reason):
        parse_frame(bytes.fromhex(raw))


def test_frame_length_tells_a_reader_when_a_frame_is_whole() -> None:
    whole = bytes.fromhex(LIBMBUS["frames"][0]["hex"])
    assert frame_length(b"") is None
    assert frame_length(whole[:2]) is None
    assert frame_length(whole[:3]) == len(whole)
    assert frame_length(b"\xe5") == 1
    assert frame_length(b"\x10") == 5
    with pytest.raises(MbusFrameError, match="bad start"):
        frame_length(b"\x00\x68")


def test_secondary_select_with_wildcards() -> None:
    # ID 12345678 -> 78 56 34 12; wildcard manufacturer, version, medium
    assert select_secondary_data("12345678") == bytes.fromhex("78563412FFFFFFFF")
    assert select_secondary_data("1FFFFFFF", man=0x2C2D, ver=0x34, med=4) == bytes.fromhex(
        "FFFFFF1F2D2C3404"
    )
    f = parse_frame(select_secondary("12345678"))
    sel = bytes.fromhex("78563412FFFFFFFF")
    assert f == Frame(c=C_SND_UD, a=ADDR_SELECTED, ci=CI_SELECT, data=sel)
    # pyMeterBus tests/test_serial.py test_send_select_frame: "00000001DADAFA1B" (FCB set)
    data = select_secondary_data("00000001", man=0xDADA, ver=0xFA, med=0x1B)
    assert long_frame(C_SND_UD_FCB, ADDR_SELECTED, CI_SELECT, data) == bytes.fromhex(
        "680b0b6873fd5201000000dadafa1b8c16"
    )
    with pytest.raises(ValueError, match="8 digits"):
        select_secondary_data("1234567")
    with pytest.raises(ValueError, match="8 digits"):
        select_secondary_data("1234567A")


def test_rsp_ud_with_acd_and_dfc_bits() -> None:
    for c in (0x08, 0x18, 0x28, 0x38):
        assert Frame(c=c, a=1, ci=0x72).is_rsp_ud()
    assert not Frame(c=0x53, a=1, ci=0x52).is_rsp_ud()
    assert C_REQ_UD2 | C_FCB == C_REQ_UD2_FCB and C_REQ_UD2 & C_FCV
    assert (ADDR_TEST, ADDR_BROADCAST, C_SND_NKE, C_SND_UD_FCB) == (254, 255, 0x40, 0x73)
