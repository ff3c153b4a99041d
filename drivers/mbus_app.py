"""EN 13757-3 application layer: the user data of an M-Bus RSP_UD, pure bytes.

``decode_user_data(ci, data)`` reads the variable data structure (CI 0x72 long
header, 0x7A short header, 0x78 no header) into a :class:`Telegram` of :class:`Record`
values scaled to SI units (see ``drivers.mbus_vif``). Anything malformed or cut short raises
:class:`MbusDecodeError`; an application error reply (CI 0x70) raises
:class:`MbusApplicationError`. ``encode_user_data`` is the inverse for CI 0x72 (used by
the simulator's M-Bus slave and by the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.mbus_codec import (
    CodecError,
    decode_value,
    encode_value,
    lvar_length,
)
from drivers.mbus_vif import VifError, describe

CI_LONG = 0x72
CI_SHORT = 0x7A
CI_ERROR = 0x70
CI_NO_HEADER = 0x78
MAX_DIFES = 10

FUNCTIONS = ("instantaneous", "maximum", "minimum", "error")
APPLICATION_ERRORS = {
    0: "unspecified error",
    1: "unimplemented CI field",
    2: "buffer too long, truncated",
    3: "too many records",
    4: "premature end of record",
    5: "more than 10 DIFEs",
    6: "more than 10 VIFEs",
    7: "reserved",
    8: "application too busy for handling readout request",
    9: "too many readouts",
}

# status byte (fixed header)
STATUS_APP_MASK = 0x03  # 0 ok, 1 busy, 2 error, 3 reserved
STATUS_POWER_LOW = 0x04
STATUS_PERMANENT_ERROR = 0x08
STATUS_TEMPORARY_ERROR = 0x10


class MbusDecodeError(ValueError):
    """User data that is malformed or cut short; the message says where."""


class MbusApplicationError(MbusDecodeError):
    """The slave answered with an application error (CI 0x70)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        text = "no error code" if code is None else APPLICATION_ERRORS.get(code, "reserved")
        super().__init__(f"application error reply (CI 0x70): {code}: {text}")


@dataclass(frozen=True, slots=True)
class Header:
    id: str  # 8 digits, as printed on the meter
    manufacturer: str  # 3 letters
    version: int
    medium: int
    access: int
    status: int
    signature: int


@dataclass(frozen=True, slots=True)
class Record:
    dif: int
    vif: int
    storage: int
    tariff: int
    subunit: int
    function: str  # instantaneous | maximum | minimum | error
    quantity: str
    value: float | int | str | bytes | None
    unit: str
    error_state: bool
    raw: bytes  # the whole record as sent (DIF .. data)
    vifes: tuple[int, ...] = ()
    difes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Telegram:
    ci: int
    header: Header | None
    access: int
    status: int
    records: tuple[Record, ...]
    manufacturer_data: bytes
    more_follows: bool
    signature: int = 0


# --- header ----------------------------------------------------------------------------


def decode_manufacturer(code: int) -> str:
    return "".join(chr(((code >> s) & 0x1F) + 64) for s in (10, 5, 0))


def encode_manufacturer(letters: str) -> int:
    if len(letters) != 3 or any(not "@" <= ch <= "_" for ch in letters.upper()):
        raise ValueError(f"manufacturer must be 3 letters A-Z, got {letters!r}")
    a, b, c = (ord(ch) - 64 for ch in letters.upper())
    return (a << 10) | (b << 5) | c


def decode_id(b: bytes) -> str:
    """4 bytes of BCD, least significant byte first, to the printed 8 digits."""
    return bytes(reversed(b)).hex().upper()


def encode_id(ident: str) -> bytes:
    if len(ident) != 8 or any(ch not in "0123456789" for ch in ident):
        raise ValueError(f"identification number must be 8 digits, got {ident!r}")
    return bytes(reversed(bytes.fromhex(ident)))


def _long_header(data: bytes) -> Header:
    if len(data) < 12:
        raise MbusDecodeError(f"cut short: long header needs 12 bytes, got {len(data)}")
    return Header(
        id=decode_id(data[0:4]),
        manufacturer=decode_manufacturer(data[4] | data[5] << 8),
        version=data[6],
        medium=data[7],
        access=data[8],
        status=data[9],
        signature=data[10] | data[11] << 8,
    )


# --- records ---------------------------------------------------------------------------


def _chain(data: bytes, i: int, first: int, what: str, start: int) -> tuple[list[int], int]:
    """The DIFEs or VIFEs after a byte ``first`` whose bit 7 says an extension follows."""
    out: list[int] = []
    ext = first & 0x80
    while ext:
        if i >= len(data):
            raise MbusDecodeError(f"cut short in the {what}s of the record at byte {start}")
        if len(out) >= MAX_DIFES:  # 10 DIFEs and 10 VIFEs at most
            raise MbusDecodeError(f"more than {MAX_DIFES} {what}s in the record at byte {start}")
        out.append(data[i])
        ext = data[i] & 0x80
        i += 1
    return out, i


def _plain_text(data: bytes, i: int, start: int) -> tuple[str, int]:
    """A plain-text VIF's unit: a length byte, then ASCII, last character first."""
    if i >= len(data) or i + 1 + data[i] > len(data):
        raise MbusDecodeError(f"cut short in the plain-text VIF at byte {start}")
    end = i + 1 + data[i]
    return data[i + 1 : end][::-1].decode("latin-1"), end


def _decode_record(data: bytes, i: int) -> tuple[Record, int]:
    """One data record starting at ``data[i]`` (not 0x0F/0x1F/0x2F); returns it and the
    index after it."""
    n = len(data)
    start = i
    dif = data[i]
    if dif & 0x0F == 0x0F:
        raise MbusDecodeError(f"reserved special DIF 0x{dif:02X} at byte {start}")
    difes, i = _chain(data, i + 1, dif, "DIFE", start)
    storage = (dif >> 6) & 0x01
    tariff = subunit = 0
    for k, dife in enumerate(difes):
        storage |= (dife & 0x0F) << (1 + 4 * k)
        tariff |= ((dife >> 4) & 0x03) << (2 * k)
        subunit |= ((dife >> 6) & 0x01) << k
    if i >= n:
        raise MbusDecodeError(f"cut short before the VIF of the record at byte {start}")
    vif = data[i]
    text = ""
    if vif & 0x7F == 0x7C:
        text, i = _plain_text(data, i + 1, start)
    else:
        i += 1
    vifes, i = _chain(data, i, vif, "VIFE", start)
    dtype = dif & 0x0F
    try:
        meaning = describe(vif, tuple(vifes))
        size = lvar_length(data, i) if dtype == 0x0D else _SIZES[dtype]
        if i + size > n:
            raise MbusDecodeError(
                f"cut short: the record at byte {start} needs {size} data bytes, {n - i} left"
            )
        value = decode_value(dtype, data[i : i + size], meaning.info)
    except (VifError, CodecError) as e:
        raise MbusDecodeError(f"{e} in the record at byte {start}") from None
    i += size
    function = FUNCTIONS[(dif >> 4) & 0x03]
    info = meaning.info
    rec = Record(
        dif=dif,
        vif=vif,
        storage=storage,
        tariff=tariff,
        subunit=subunit,
        function=function,
        quantity=info.quantity,
        value=value,
        unit=text if info.quantity.startswith("plain_text") else info.unit,
        error_state=function == "error" or meaning.error_state,
        raw=bytes(data[start:i]),
        vifes=tuple(vifes),
        difes=tuple(difes),
    )
    return rec, i


# data field sizes by DIF bits 0-3 (0x0D variable, 0x0F special: handled apart)
_SIZES = {0x0: 0, 0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x5: 4, 0x6: 6, 0x7: 8, 0x8: 0}
_SIZES.update({0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6})


def decode_records(data: bytes) -> tuple[tuple[Record, ...], bytes, bool]:
    """The records of a variable data structure (after the header): records,
    manufacturer data, more_follows. Every step consumes at least one byte."""
    records: list[Record] = []
    i = 0
    n = len(data)
    while i < n:
        dif = data[i]
        if dif == 0x2F:  # idle filler
            i += 1
            continue
        if dif in (0x0F, 0x1F):
            return tuple(records), bytes(data[i + 1 :]), dif == 0x1F
        rec, i = _decode_record(data, i)
        records.append(rec)
    return tuple(records), b"", False


def decode_user_data(ci: int, data: bytes) -> Telegram:
    """Decode the user data (the bytes after CI) of a RSP_UD."""
    data = bytes(data)
    if ci == CI_ERROR:
        raise MbusApplicationError(data[0] if data else None)
    if ci == CI_LONG:
        header = _long_header(data)
        records, mdata, more = decode_records(data[12:])
        return Telegram(
            ci, header, header.access, header.status, records, mdata, more, header.signature
        )
    if ci == CI_SHORT:
        if len(data) < 4:
            raise MbusDecodeError(f"cut short: short header needs 4 bytes, got {len(data)}")
        records, mdata, more = decode_records(data[4:])
        return Telegram(ci, None, data[0], data[1], records, mdata, more, data[2] | data[3] << 8)
    if ci == CI_NO_HEADER:
        records, mdata, more = decode_records(data)
        return Telegram(ci, None, 0, 0, records, mdata, more)
    raise MbusDecodeError(f"unsupported CI field 0x{ci:02X}")


# --- encoding --------------------------------------------------------------------------


def encode_record(rec: Record) -> bytes:
    """The bytes of ``rec`` from its fields (dif data type, function, storage, tariff,
    subunit, vif, vifes, unit for plain text, value in SI units); ``raw`` is ignored."""
    if rec.function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {rec.function!r}")
    if min(rec.storage, rec.tariff, rec.subunit) < 0:
        raise ValueError("storage, tariff and subunit must be >= 0")
    dtype = rec.dif & 0x0F
    if dtype == 0x0F:
        raise ValueError("DIF 0x0F/0x1F/0x2F are not records")
    difes: list[int] = []
    storage = rec.storage >> 1
    tariff = rec.tariff
    subunit = rec.subunit
    while storage or tariff or subunit:
        difes.append((storage & 0x0F) | (tariff & 0x03) << 4 | (subunit & 0x01) << 6)
        storage >>= 4
        tariff >>= 2
        subunit >>= 1
    if len(difes) > MAX_DIFES:
        raise ValueError("storage/tariff/subunit too large for 10 DIFEs")
    for k in range(len(difes) - 1):
        difes[k] |= 0x80
    dif = dtype | FUNCTIONS.index(rec.function) << 4 | (rec.storage & 1) << 6
    dif |= 0x80 if difes else 0
    vif = rec.vif | (0x80 if rec.vifes else 0)
    out = bytearray((dif, *difes, vif))
    if vif & 0x7F == 0x7C:
        text = rec.unit.encode("latin-1")[::-1]
        out += bytes((len(text),)) + text
    vifes = list(rec.vifes)
    for k in range(len(vifes)):
        vifes[k] = (vifes[k] & 0x7F) | (0x80 if k < len(vifes) - 1 else 0)
    out += bytes(vifes)
    try:
        info = describe(vif, tuple(vifes)).info
        out += encode_value(dtype, rec.value, info)
    except (VifError, CodecError) as e:
        raise ValueError(f"cannot encode {rec.quantity} record: {e}") from None
    return bytes(out)


def encode_user_data(
    header: Header,
    records: Sequence[Record],
    manufacturer_data: bytes = b"",
    more_follows: bool = False,
) -> bytes:
    """CI 0x72 user data: long header, records, then (when given or when more records
    follow) DIF 0x0F/0x1F and the manufacturer data."""
    out = bytearray(encode_id(header.id))
    out += encode_manufacturer(header.manufacturer).to_bytes(2, "little")
    out += bytes((header.version, header.medium, header.access, header.status))
    out += header.signature.to_bytes(2, "little")
    for rec in records:
        out += encode_record(rec)
    if more_follows:
        out += b"\x1f" + manufacturer_data
    elif manufacturer_data:
        out += b"\x0f" + manufacturer_data
    return bytes(out)


def make_record(
    data_type: int,
    vif: int,
    value: float | int | str | bytes | None,
    *,
    vifes: Sequence[int] = (),
    storage: int = 0,
    tariff: int = 0,
    subunit: int = 0,
    function: str = "instantaneous",
    unit: str = "",
) -> Record:
    """A complete Record (quantity, unit, raw) for ``value`` given in SI units, e.g.
    ``make_record(0x4, 0x06, 12345)`` for energy 12345 kWh as int32 in kWh units
    (value in Wh: 12345000). ``unit`` is only used for a plain-text VIF."""
    proto = Record(
        dif=data_type & 0x0F,
        vif=vif & 0x7F if not vifes else vif,
        storage=storage,
        tariff=tariff,
        subunit=subunit,
        function=function,
        quantity="",
        value=value,
        unit=unit,
        error_state=False,
        raw=b"",
        vifes=tuple(vifes),
    )
    raw = encode_record(proto)
    rec, end = _decode_record(raw, 0)
    assert end == len(raw)
    return rec
