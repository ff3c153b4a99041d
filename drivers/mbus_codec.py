"""EN 13757-3 data fields: integers, BCD, real, variable length, dates; pure bytes.

``decode_value(dtype, field, info)`` turns the data field of a record (``dtype`` = DIF
bits 0-3) into its value in the SI unit of ``info`` (value = raw * factor * 10**exp);
``encode_value`` is the inverse. Dates come out as ISO text: type G ``YYYY-MM-DD``,
type F ``YYYY-MM-DDTHH:MM``, type I ``YYYY-MM-DDTHH:MM:SS``.
"""

from __future__ import annotations

import math
import re
import struct

from drivers.mbus_vif import DATE, DATETIME, VifInfo

INT_SIZES = {0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x6: 6, 0x7: 8}
BCD_SIZES = {0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6}
_F32 = struct.Struct("<f")


class CodecError(ValueError):
    """A data field that cannot be read or written."""


def lvar_length(data: bytes, i: int) -> int:
    """Size (LVAR byte included) of the variable-length field at ``data[i]``."""
    if i >= len(data):
        raise CodecError("cut short before the LVAR byte")
    lv = data[i]
    if lv <= 0xBF:
        return 1 + lv  # text
    if lv <= 0xCF:
        return 1 + lv - 0xC0  # positive BCD, 2 digits a byte
    if lv <= 0xDF:
        return 1 + lv - 0xD0  # negative BCD
    if lv <= 0xEF:
        return 1 + lv - 0xE0  # binary number
    if lv <= 0xF4:
        return 1 + 4 * (lv - 0xEC)  # binary number, 4*(LVAR-0xEC) bytes
    if lv == 0xF5:
        return 1 + 48
    if lv == 0xF6:
        return 1 + 64
    raise CodecError(f"reserved LVAR 0x{lv:02X}")


def _p10(n: int) -> int:
    return int(10**n)


def _scale(raw: int | float, info: VifInfo) -> int | float:
    if isinstance(raw, int) and info.exp >= 0:
        return raw * info.factor * _p10(info.exp)
    if info.exp >= 0:
        return float(raw) * info.factor * _p10(info.exp)
    return raw * info.factor / _p10(-info.exp)


def _unscale(value: object, info: VifInfo) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"a number is needed, got {value!r}")
    if not math.isfinite(value):
        raise CodecError("the value is not finite")
    if isinstance(value, int):
        num = value * _p10(max(0, -info.exp))
        q, r = divmod(num, info.factor * _p10(max(0, info.exp)))
        if r:
            raise CodecError(f"{value} is not a multiple of the VIF's resolution")
        return q
    x = value * _p10(-info.exp) if info.exp < 0 else value / _p10(info.exp)
    return round(x / info.factor)


def bcd_decode(field: bytes) -> int | None:
    """Digits least significant byte first; a top nibble F marks a negative number.
    None when a digit is not 0-9 (meters send e.g. FF.. for 'no value')."""
    digits = field[::-1].hex()
    negative = digits[0] == "f"
    if negative:
        digits = digits[1:] or "0"
    if not digits.isdigit():
        return None
    n = int(digits)
    return -n if negative else n


def bcd_encode(n: int, size: int) -> bytes:
    width = 2 * size
    text = "f" + str(-n).rjust(width - 1, "0") if n < 0 else str(n).rjust(width, "0")
    if len(text) > width:
        raise CodecError(f"{n} does not fit in {width} BCD digits")
    return bytes.fromhex(text)[::-1]


def _date_g(f: bytes) -> str:
    day = f[0] & 0x1F
    month = f[1] & 0x0F
    year = 2000 + ((f[1] & 0xF0) >> 1 | (f[0] & 0xE0) >> 5)
    return f"{year:04d}-{month:02d}-{day:02d}"


def _datetime_f(f: bytes, second: int | None = None) -> str:
    minute = f[0] & 0x3F
    hour = f[1] & 0x1F
    date = _date_g(f[2:4])
    tail = "" if second is None else f":{second:02d}"
    return f"{date}T{hour:02d}:{minute:02d}{tail}"


def _decode_time(dtype: int, field: bytes, info: VifInfo) -> str | None:
    if info.kind == DATE and dtype == 0x2:
        return _date_g(field)
    if dtype == 0x4:
        return _datetime_f(field)
    if dtype == 0x6:
        return _datetime_f(field[1:5], field[0] & 0x3F)
    return None


def decode_value(dtype: int, field: bytes, info: VifInfo) -> int | float | str | bytes | None:
    if info.kind in (DATE, DATETIME):
        t = _decode_time(dtype, field, info)
        if t is not None:
            return t
    if dtype in INT_SIZES:
        raw = int.from_bytes(field, "little", signed=True)
        return _scale(raw, info)
    if dtype == 0x5:
        x = float(_F32.unpack(field)[0])
        return _scale(x, info) if math.isfinite(x) else None
    if dtype in BCD_SIZES:
        b = bcd_decode(field)
        return None if b is None else _scale(b, info)
    if dtype == 0xD:
        return _decode_lvar(field, info)
    return None  # 0x0 no data, 0x8 selection for readout


def _decode_lvar(field: bytes, info: VifInfo) -> int | float | str | bytes | None:
    lv = field[0]
    body = field[1:]
    if lv <= 0xBF:
        return body[::-1].decode("latin-1")
    if lv <= 0xDF:
        b = bcd_decode(body)
        if b is None:
            return None
        return _scale(-b if lv >= 0xD0 else b, info)
    return bytes(body)  # binary number, kept as bytes (little endian)


def _encode_date(dtype: int, value: object, info: VifInfo) -> bytes:
    if not isinstance(value, str):
        raise CodecError(f"a date text is needed, got {value!r}")
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d)(?::(\d\d))?)?", value)
    if m is None:
        raise CodecError(f"not a date: {value!r}")
    year, month, day = int(m[1]) - 2000, int(m[2]), int(m[3])
    if not (0 <= year <= 127 and month <= 15 and day <= 31):
        raise CodecError(f"date out of range: {value!r}")
    g = bytes((day | (year & 0x07) << 5, month | (year & 0x78) << 1))
    if info.kind == DATE and dtype == 0x2:
        return g
    hour, minute = int(m[4] or 0), int(m[5] or 0)
    if hour > 23 or minute > 59:
        raise CodecError(f"time out of range: {value!r}")
    f = bytes((minute, hour)) + g
    if dtype == 0x4:
        return f
    if dtype == 0x6:
        return bytes((int(m[6] or 0) & 0x3F,)) + f + b"\x00"
    raise CodecError(f"data type 0x{dtype:X} cannot hold a date")


def encode_value(dtype: int, value: object, info: VifInfo) -> bytes:
    if info.kind in (DATE, DATETIME) and isinstance(value, str):
        return _encode_date(dtype, value, info)
    if dtype in (0x0, 0x8):
        if value is not None:
            raise CodecError(f"data type 0x{dtype:X} carries no value")
        return b""
    if dtype in INT_SIZES:
        size = INT_SIZES[dtype]
        try:
            return _unscale(value, info).to_bytes(size, "little", signed=True)
        except OverflowError:
            raise CodecError(f"{value!r} does not fit in {8 * size} bits") from None
    if dtype == 0x5:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"a number is needed, got {value!r}")
        x = value / (info.factor * 10.0**info.exp)
        try:
            return _F32.pack(x)
        except OverflowError:
            raise CodecError(f"{value!r} does not fit in a 32-bit real") from None
    if dtype in BCD_SIZES:
        return bcd_encode(_unscale(value, info), BCD_SIZES[dtype])
    if dtype == 0xD:
        return _encode_lvar(value, info)
    raise CodecError(f"data type 0x{dtype:X} cannot be encoded")


def _encode_lvar(value: object, info: VifInfo) -> bytes:
    if isinstance(value, str):
        text = value.encode("latin-1")[::-1]
        if len(text) > 0xBF:
            raise CodecError("text longer than 191 characters")
        return bytes((len(text),)) + text
    if isinstance(value, bytes):
        if len(value) > 15:
            raise CodecError("binary LVAR longer than 15 bytes")
        return bytes((0xE0 + len(value),)) + value
    raw = _unscale(value, info)
    digits = str(abs(raw))
    size = (len(digits) + 1) // 2
    if size > 15:
        raise CodecError(f"{value!r} has too many digits for a BCD LVAR")
    lv = (0xD0 if raw < 0 else 0xC0) + size
    return bytes((lv,)) + bcd_encode(abs(raw), size)
