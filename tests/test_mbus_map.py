"""M-Bus telegrams to typed values: default and meter profiles, units, quality, identity,
stored values. Real frames from tests/data/mbus (see its README), plus telegrams built
with the encoder where a fault must be shown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from drivers.mbus_app import (
    Header,
    Record,
    Telegram,
    decode_user_data,
    encode_user_data,
    make_record,
)
from drivers.mbus_frame import Frame, parse_frame
from drivers.mbus_map import (
    MbusProfileError,
    available_mbus_profiles,
    convert,
    identity,
    load_mbus_profile,
    map_values,
    parse_mbus_profile,
    stored_values,
)
from drivers.profile import available_profiles
from drivers.types import Quality, Value

DATA = Path(__file__).parent / "data" / "mbus"


def real(source: str, name: str) -> Telegram:
    doc: dict[str, Any] = json.loads((DATA / source).read_text(encoding="utf-8"))
    hexes = [f["hex"] for f in doc["frames"] if f["name"] == name]
    frame = parse_frame(bytes.fromhex(hexes[0]))
    assert isinstance(frame, Frame) and frame.ci is not None
    return decode_user_data(frame.ci, frame.data)


def values(vals: dict[str, Value]) -> dict[str, float]:
    return {k: round(v.value, 6) for k, v in vals.items()}


def qualities(vals: dict[str, Value]) -> set[Quality]:
    return {v.quality for k, v in vals.items() if k != "status"}


HEADER = Header("12345678", "KAM", 0x35, 4, 1, 0, 0)


def telegram(records: list[Record], status: int = 0) -> Telegram:
    h = Header(HEADER.id, HEADER.manufacturer, HEADER.version, 4, 1, status, 0)
    return decode_user_data(0x72, encode_user_data(h, records))


def typical(
    energy_kwh: int = 1234, supply: float = 70.25, volume_flag: tuple[int, ...] = ()
) -> list[Record]:
    return [
        make_record(0x4, 0x06, energy_kwh * 1000),  # kWh
        make_record(0x4, 0x14, 55.5, vifes=volume_flag),  # 0.01 m3
        make_record(0x4, 0x3B, 0.75),  # l/h
        make_record(0x4, 0x2D, 23_400),  # 0.1 kW
        make_record(0x2, 0x59, supply),  # 0.01 C
        make_record(0x2, 0x5D, 40.5),
        make_record(0x4, 0x06, 1000_000, storage=1),  # billing-date energy
        make_record(0x2, 0x6C, "2025-12-31", storage=1),
    ]


def test_default_profile_on_a_real_multical_601() -> None:
    vals = map_values(real("libmbus.json", "kamstrup_multical_601"))
    assert values(vals) == {
        "energy_kwh": 37351.0,
        "volume_m3": 561.08,
        "flow_m3h": 0.543,
        "power_kw": 34.7,
        "supply_c": 101.69,
        "return_c": 46.16,
        "delta_t_c": 55.53,
        "status": 0.0,
    }
    assert qualities(vals) == {Quality.GOOD}
    units = {k: v.unit for k, v in vals.items()}
    assert (
        units["energy_kwh"] == "kWh" and units["power_kw"] == "kW" and units["flow_m3h"] == "m3/h"
    )


def test_energy_in_joules_becomes_kwh() -> None:
    """wmbusmeters' Landis+Gyr Ultraheat telegram: energy in MJ, 8974.444444 kWh there."""
    vals = map_values(real("wmbusmeters.json", "ultraheat"))
    assert math.isclose(vals["energy_kwh"].value, 8974.444444, rel_tol=1e-9)
    assert vals["power_kw"].value == 0.5 and vals["flow_m3h"].value == 0.808
    assert (vals["supply_c"].value, vals["return_c"].value) == (52, 51)
    assert qualities(vals) == {Quality.GOOD}


def test_status_byte_errors_make_every_value_doubtful() -> None:
    # Landis+Gyr T230 in libmbus: status 0x10, temporary error
    vals = map_values(real("libmbus.json", "landis+gyr_ultraheat_t230"))
    assert qualities(vals) == {Quality.METER_ERROR}
    assert vals["status"] == Value(16.0, "", Quality.GOOD)
    # wmbusmeters' SensoStar: status 0x27 ("ALARM POWER_LOW" there)
    vals = map_values(real("wmbusmeters.json", "sensostar"))
    assert qualities(vals) == {Quality.METER_ERROR}
    assert vals["status"].value == 7
    assert vals["energy_kwh"].value == 8608


@pytest.mark.parametrize(
    ("status", "doubtful"),
    [
        (0x00, False),
        (0x01, True),
        (0x02, True),
        (0x04, False),
        (0x08, True),
        (0x10, True),
        (0xE0, False),
    ],
)
def test_status_bits(status: int, doubtful: bool) -> None:
    vals = map_values(telegram(typical(), status=status))
    assert qualities(vals) == ({Quality.METER_ERROR} if doubtful else {Quality.GOOD})
    assert vals["status"].value == status & 0x1F  # power low is reported, manufacturer bits not


def test_error_state_and_missing_values_are_not_good() -> None:
    recs = typical(volume_flag=(0x15,))  # VIFE 0x15: no data available
    t = telegram(recs)
    vals = map_values(t)
    assert vals["volume_m3"].quality is Quality.METER_ERROR
    assert vals["energy_kwh"].quality is Quality.GOOD
    # a BCD register reading FFFFFFFF (no value)
    energy = make_record(0x4, 0x06, 1234 * 1000).raw
    assert energy in encode_user_data(HEADER, typical())
    raw = encode_user_data(HEADER, typical()).replace(energy, bytes.fromhex("0C06FFFFFFFF"))
    vals = map_values(decode_user_data(0x72, raw))
    assert vals["energy_kwh"] == Value(0.0, "kWh", Quality.METER_ERROR)


def test_plausibility_ranges() -> None:
    assert map_values(telegram(typical(supply=185.0)))["supply_c"].quality is Quality.IMPLAUSIBLE
    assert map_values(telegram(typical(supply=0.0)))["supply_c"].quality is Quality.IMPLAUSIBLE
    assert map_values(telegram(typical(supply=95.0)))["supply_c"].quality is Quality.GOOD


def test_first_record_of_storage_zero_tariff_zero_is_taken() -> None:
    recs = [
        make_record(0x4, 0x06, 5_000_000, tariff=1),
        make_record(0x4, 0x06, 9_000_000, storage=1),
        make_record(0x4, 0x06, 7_000_000, function="maximum"),
        make_record(0x4, 0x06, 1_000_000),
        make_record(0x4, 0x06, 2_000_000),
    ]
    assert map_values(telegram(recs))["energy_kwh"].value == 1000


def test_units_convert() -> None:
    recs = [
        make_record(0x4, 0xFB, 12_300_000_000, vifes=(0x01,)),  # MWh register -> Wh value
        make_record(0x4, 0x43, 30.0),  # sent in 10^-4 m3/min, read as m3/h
        make_record(0x4, 0x33, 3.6e9),  # 10^3 J/h -> 1 kW
    ]
    vals = map_values(telegram(recs))
    assert vals["energy_kwh"].value == pytest.approx(12_300_000)
    assert vals["flow_m3h"].value == pytest.approx(30.0)
    assert vals["power_kw"].value == pytest.approx(1000.0)
    assert convert(1.0, "GJ", "kWh") == pytest.approx(277.7777778)
    assert convert(2500.0, "l/h", "m3/h") == 2.5
    assert convert(1.0, "bar", "kWh") is None


def test_multical_603_profile_and_its_info_bits() -> None:
    prof = load_mbus_profile("mbus-multical-603")
    vals = map_values(real("wmbusmeters.json", "multical403"), prof)
    assert values(vals) == {
        "energy_kwh": 34510.0,
        "volume_m3": 2232.49,
        "flow_m3h": 0.527,
        "supply_c": 64.6,
        "return_c": 45.16,
        "status": 0.0,
    }
    assert qualities(vals) == {Quality.GOOD}

    def with_info(bits: int) -> dict[str, Value]:
        info = make_record(0x4, 0xFF, bits, vifes=(0x22,))
        return map_values(telegram([*typical(), info]), prof)

    sensor = with_info(0x04)
    assert sensor["supply_c"].quality is Quality.METER_ERROR
    assert sensor["energy_kwh"].quality is Quality.METER_ERROR
    assert sensor["flow_m3h"].quality is Quality.GOOD
    assert sensor["status"].value == 0x04 << 8
    air = with_info(0x100)
    assert air["flow_m3h"].quality is Quality.METER_ERROR and air["supply_c"].good
    battery = with_info(0x02)
    assert {v.quality for v in battery.values()} == {Quality.GOOD}
    assert battery["status"].value == 0x02 << 8


def test_a_profile_can_pick_the_billing_date_record() -> None:
    prof = parse_mbus_profile(
        """
        [profile]
        name = "mbus-billing"
        [[select]]
        name = "energy_kwh"
        quantity = "energy"
        storage = 1
        [[select]]
        name = "volume_m3"
        quantity = "manufacturer_specific"
        vif = 0xFF
        vifes = [0x07]
        unit = "l"
        """
    )
    t = telegram([*typical(), make_record(0x4, 0xFF, 4321, vifes=(0x07,))])
    vals = map_values(t, prof)
    assert vals["energy_kwh"].value == 1000
    assert vals["volume_m3"].value == pytest.approx(4.321)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[profile]\nname="x"\n', "select"),
        ('[profile]\nname="x"\n[[select]]\nname="energy"\nquantity="energy"\n', "select[0].name"),
        ('[profile]\nname="x"\n[[select]]\nname="energy_kwh"\n', "select[0].quantity"),
        (
            '[profile]\nname="x"\n[[select]]\nname="energy_kwh"\nquantity="energy"\nstorge=1\n',
            "select[0].storge",
        ),
        (
            '[profile]\nname="x"\n[[select]]\nname="energy_kwh"\nquantity="energy"\nunit="m3"\n',
            "select[0].unit",
        ),
        (
            '[profile]\nname="x"\n[[select]]\nname="flow_m3h"\nquantity="q"\nvif=300\n',
            "select[0].vif",
        ),
        (
            '[profile]\nname="x"\n[[select]]\nname="flow_m3h"\nquantity="q"\nrange=[2,1]\n',
            "select[0].range",
        ),
        (
            '[profile]\nname="x"\n[[select]]\nname="flow_m3h"\nquantity="q"\n[[flags]]\nvif=255\n',
            "flags[0].mask",
        ),
        ("[profile\n", "not valid TOML"),
    ],
)
def test_bad_profiles_name_the_key(text: str, where: str) -> None:
    with pytest.raises(MbusProfileError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_mbus_profile(text, "p.toml")


def test_shipped_profiles_are_listed_apart_from_modbus_ones() -> None:
    assert {"mbus", "mbus-multical-603"} <= set(available_mbus_profiles())
    assert not any(n.startswith("mbus") for n in available_profiles())
    for name in available_mbus_profiles():
        assert load_mbus_profile(name).selects
    with pytest.raises(MbusProfileError):
        load_mbus_profile("sim-heat-meter")


def test_identity() -> None:
    t = real("libmbus.json", "kamstrup_multical_601")
    assert identity(t) == {
        "id": "06855817",
        "manufacturer": "KAM",
        "version": 8,
        "medium": 4,
        "status": 0,
    }
    short = decode_user_data(0x7A, bytes.fromhex("0710000004060A000000"))
    assert identity(short) == {
        "id": None,
        "manufacturer": None,
        "version": None,
        "medium": None,
        "status": 0x10,
    }


def test_stored_values_are_plain_json() -> None:
    t = real("wmbusmeters.json", "sensostar")
    stored = stored_values(t)
    assert {
        "storage": 1,
        "tariff": 0,
        "subunit": 0,
        "function": "instantaneous",
        "quantity": "energy",
        "value": 8608000,
        "unit": "Wh",
        "error_state": False,
    } in stored
    assert any(s["quantity"] == "date" and s["value"] == "2018-12-31" for s in stored)
    assert all(s["storage"] >= 1 for s in stored)
    json.dumps(stored)
    binary = telegram([make_record(0xD, 0x7F, b"\x01\x02", storage=3)])
    assert stored_values(binary)[0]["value"] == "0102"
