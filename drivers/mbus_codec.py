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
    if not digits:
        return None  # a variable-length BCD of no digits
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


def _date_g(f: bytes, base: int = 2000) -> str:
    day = f[0] & 0x1F
    month = f[1] & 0x0F
    year = base + ((f[1] & 0xF0) >> 1 | (f[0] & 0xE0) >> 5)
    return f"{year:04d}-{month:02d}-{day:02d}"


def _datetime_f(f: bytes) -> str | None:
    """Type F; None when the meter flags the time invalid (IV bit)."""
    if f[0] & 0x80:
        return None
    y = (f[3] & 0xF0) >> 1 | (f[2] & 0xE0) >> 5
    century = (f[1] & 0x60) >> 5
    if century == 0 and y <= 80:  # two-digit years of older meters
        century = 1
    date = _date_g(f[2:4], 1900 + 100 * century)
    return f"{date}T{f[1] & 0x1F:02d}:{f[0] & 0x3F:02d}"


def _datetime_i(f: bytes) -> str | None:
    """Type I (48 bit, with seconds); None when flagged invalid."""
    if f[1] & 0x80:
        return None
    return f"{_date_g(f[3:5])}T{f[2] & 0x1F:02d}:{f[1] & 0x3F:02d}:{f[0] & 0x3F:02d}"


def _decode_time(dtype: int, field: bytes, info: VifInfo) -> tuple[bool, str | None]:
    if info.kind == DATE and dtype == 0x2:
        return True, _date_g(field)
    if dtype == 0x4:
        return True, _datetime_f(field)
    if dtype == 0x6:
        return True, _datetime_i(field)
    return False, None


def decode_value(dtype: int, field: bytes, info: VifInfo) -> int | float | str | bytes | None:
    if info.kind in (DATE, DATETIME):
        is_time, t = _decode_time(dtype, field, info)
        if is_time:
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
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour, minute, second = int(m[4] or 0), int(m[5] or 0), int(m[6] or 0)
    if month > 15 or day > 31 or hour > 23 or minute > 59 or second > 59:
        raise CodecError(f"date or time out of range: {value!r}")

    def g(y: int) -> bytes:
        return bytes((day | (y & 0x07) << 5, month | (y & 0x78) << 1))

    if dtype == 0x4:  # type F: century bits in the hour byte
        century, y = divmod(year - 1900, 100)
        if not 0 <= century <= 3 or (century == 0 and y <= 80):
            raise CodecError(f"year out of range for type F: {value!r}")
        return bytes((minute, hour | century << 5)) + g(y)
    if not 2000 <= year <= 2127:
        raise CodecError(f"year out of range (2000..2127): {value!r}")
    if dtype == 0x2 and info.kind == DATE:
        return g(year - 2000)
    if dtype == 0x6:
        return bytes((second, minute, hour)) + g(year - 2000) + b"\x00"
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
