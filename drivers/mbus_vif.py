"""EN 13757-3 value information: what a VIF (and its VIFEs) says about a record.

Pure tables, no I/O. A record's value is ``raw * factor * 10**exp`` in the SI ``unit``
(energy in Wh, or J for the joule VIFs; volume m3; mass kg; power W, or J/h; flows per
hour; temperatures C, differences K; times s; pressure bar).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

MAX_VIFES = 10

# kind: how the data field is read beyond plain numbers
NUMBER = "number"
DATE = "date"  # type G (16 bit)
DATETIME = "datetime"  # type F (32 bit) or type I (48 bit)


@dataclass(frozen=True, slots=True)
class VifInfo:
    quantity: str
    unit: str
    exp: int = 0
    factor: int = 1
    kind: str = NUMBER


class VifError(ValueError):
    """A VIF/VIFE chain that cannot be read (too long, cut short)."""


_TIME_FACTOR = (1, 60, 3600, 86400)  # nn: seconds, minutes, hours, days
_TIME_SUFFIX = ("s", "min", "h", "d")


def _primary(code: int) -> VifInfo:
    """VIF 0x00..0x7A without its extension bit (EN 13757-3 primary table)."""
    n3 = code & 0x07
    n2 = code & 0x03
    hi = code & 0x78
    if hi == 0x00:
        return VifInfo("energy", "Wh", n3 - 3)
    if hi == 0x08:
        return VifInfo("energy", "J", n3)
    if hi == 0x10:
        return VifInfo("volume", "m3", n3 - 6)
    if hi == 0x18:
        return VifInfo("mass", "kg", n3 - 3)
    if hi == 0x28:
        return VifInfo("power", "W", n3 - 3)
    if hi == 0x30:
        return VifInfo("power", "J/h", n3)
    if hi == 0x38:
        return VifInfo("volume_flow", "m3/h", n3 - 6)
    if hi == 0x40:  # m3/min -> m3/h
        return VifInfo("volume_flow", "m3/h", n3 - 7, 60)
    if hi == 0x48:  # m3/s -> m3/h
        return VifInfo("volume_flow", "m3/h", n3 - 9, 3600)
    if hi == 0x50:
        return VifInfo("mass_flow", "kg/h", n3 - 3)
    quad = code & 0x7C
    if quad == 0x20:
        return VifInfo("on_time", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x24:
        return VifInfo("operating_time", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x58:
        return VifInfo("flow_temp", "C", n2 - 3)
    if quad == 0x5C:
        return VifInfo("return_temp", "C", n2 - 3)
    if quad == 0x60:
        return VifInfo("temp_diff", "K", n2 - 3)
    if quad == 0x64:
        return VifInfo("external_temp", "C", n2 - 3)
    if quad == 0x68:
        return VifInfo("pressure", "bar", n2 - 3)
    if quad == 0x70:
        return VifInfo("averaging_duration", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x74:
        return VifInfo("actuality_duration", "s", 0, _TIME_FACTOR[n2])
    fixed = {
        0x6C: VifInfo("date", "", kind=DATE),
        0x6D: VifInfo("datetime", "", kind=DATETIME),
        0x6E: VifInfo("hca_units", ""),
        0x6F: VifInfo("reserved", ""),
        0x78: VifInfo("fabrication_no", ""),
        0x79: VifInfo("enhanced_id", ""),
        0x7A: VifInfo("bus_address", ""),
        0x7E: VifInfo("any", ""),
    }
    return fixed.get(code, VifInfo("reserved", ""))


_FD_FIXED: dict[int, VifInfo] = {
    0x08: VifInfo("access_number", ""),
    0x09: VifInfo("medium", ""),
    0x0A: VifInfo("manufacturer", ""),
    0x0B: VifInfo("parameter_set_id", ""),
    0x0C: VifInfo("model_version", ""),
    0x0D: VifInfo("hardware_version", ""),
    0x0E: VifInfo("firmware_version", ""),
    0x0F: VifInfo("software_version", ""),
    0x10: VifInfo("customer_location", ""),
    0x11: VifInfo("customer", ""),
    0x12: VifInfo("access_code_user", ""),
    0x13: VifInfo("access_code_operator", ""),
    0x14: VifInfo("access_code_system_operator", ""),
    0x15: VifInfo("access_code_developer", ""),
    0x16: VifInfo("password", ""),
    0x17: VifInfo("error_flags", ""),
    0x18: VifInfo("error_mask", ""),
    0x1A: VifInfo("digital_output", ""),
    0x1B: VifInfo("digital_input", ""),
    0x1C: VifInfo("baudrate", ""),
    0x1D: VifInfo("response_delay", ""),
    0x1E: VifInfo("retry", ""),
    0x20: VifInfo("first_storage_no", ""),
    0x21: VifInfo("last_storage_no", ""),
    0x22: VifInfo("storage_block_size", ""),
    0x28: VifInfo("storage_interval_months", ""),
    0x29: VifInfo("storage_interval_years", ""),
    0x2B: VifInfo("time_point_second", "s"),
    0x30: VifInfo("tariff_start", "", kind=DATETIME),
    0x38: VifInfo("tariff_period_months", ""),
    0x39: VifInfo("tariff_period_years", ""),
    0x3A: VifInfo("dimensionless", ""),
    0x60: VifInfo("reset_counter", ""),
    0x61: VifInfo("cumulation_counter", ""),
    0x62: VifInfo("control_signal", ""),
    0x63: VifInfo("day_of_week", ""),
    0x64: VifInfo("week_number", ""),
    0x65: VifInfo("day_change_time", ""),
    0x66: VifInfo("parameter_activation_state", ""),
    0x67: VifInfo("supplier_info", ""),
    0x70: VifInfo("battery_change", "", kind=DATETIME),
    0x71: VifInfo("rssi", "dBm"),
}


def _ext_fd(code: int) -> VifInfo:
    """VIF 0xFD: main VIFE code extension table."""
    n2 = code & 0x03
    quad = code & 0x7C
    if quad == 0x00:
        return VifInfo("credit", "", n2 - 3)
    if quad == 0x04:
        return VifInfo("debit", "", n2 - 3)
    if quad == 0x24:
        return VifInfo("storage_interval", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x2C:
        return VifInfo("since_last_readout", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x30 and code != 0x30:
        return VifInfo("tariff_duration", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x34:
        return VifInfo("tariff_period", "s", 0, _TIME_FACTOR[n2])
    if code & 0x70 == 0x40:
        return VifInfo("voltage", "V", (code & 0x0F) - 9)
    if code & 0x70 == 0x50:
        return VifInfo("current", "A", (code & 0x0F) - 12)
    if quad == 0x68:
        return VifInfo("since_last_cumulation", "s", 0, _TIME_FACTOR[n2])
    if quad == 0x6C:
        return VifInfo("battery_operating_time", "s", 0, _TIME_FACTOR[n2])
    return _FD_FIXED.get(code, VifInfo("reserved", ""))


def _ext_fb(code: int) -> VifInfo:
    """VIF 0xFB: alternate extended VIF table (large units of heat meters)."""
    n1 = code & 0x01
    n2 = code & 0x03
    pair = code & 0x7E
    if pair == 0x00:  # 10^(n-1) MWh
        return VifInfo("energy", "Wh", n1 + 5)
    if pair == 0x08:  # 10^(n-1) GJ
        return VifInfo("energy", "J", n1 + 8)
    if pair == 0x10:  # 10^(n+2) m3
        return VifInfo("volume", "m3", n1 + 2)
    if pair == 0x18:  # 10^(n+2) t
        return VifInfo("mass", "kg", n1 + 5)
    if pair == 0x1A:  # 10^(n-1) %
        return VifInfo("relative_humidity", "%", n1 - 1)
    if pair == 0x28:  # 10^(n-1) MW
        return VifInfo("power", "W", n1 + 5)
    if pair == 0x30:  # 10^(n-1) GJ/h
        return VifInfo("power", "J/h", n1 + 8)
    quad = code & 0x7C
    fahrenheit = {0x58: "flow_temp_f", 0x5C: "return_temp_f", 0x60: "temp_diff_f"}
    if quad in fahrenheit:
        return VifInfo(fahrenheit[quad], "F", n2 - 3)
    if quad == 0x64:
        return VifInfo("external_temp_f", "F", n2 - 3)
    if quad == 0x70:
        return VifInfo("temp_limit_f", "F", n2 - 3)
    if quad == 0x74:
        return VifInfo("temp_limit", "C", n2 - 3)
    if code & 0x78 == 0x78:
        return VifInfo("max_power_count", "W", (code & 0x07) - 3)
    return VifInfo("reserved", "")


# record error codes: DIFE/VIF not implemented, no data, overflow, underflow, data error...
_ERROR_CODES = frozenset((*range(0x01, 0x08), *range(0x0B, 0x10), *range(0x15, 0x19), 0x1C))
_RATE = {0x20: "s", 0x21: "min", 0x22: "h", 0x23: "d", 0x24: "week", 0x25: "month", 0x26: "a"}
_NAMED = {
    0x27: "per_measurement",
    0x28: "per_input_pulse",
    0x29: "per_input_pulse",
    0x2A: "per_output_pulse",
    0x2B: "per_output_pulse",
    0x2C: "per_litre",
    0x2D: "per_m3",
    0x2E: "per_kg",
    0x2F: "per_k",
    0x30: "per_kwh",
    0x31: "per_gj",
    0x32: "per_kw",
    0x33: "per_k_litre",
    0x34: "per_v",
    0x35: "per_a",
    0x36: "times_s",
    0x37: "times_s_per_v",
    0x38: "times_s_per_a",
    0x39: "start_of",
    0x3A: "uncorrected",
    0x3B: "positive_only",
    0x3C: "negative_only",
    0x7E: "future",
}


def _limit_name(code: int) -> str:
    upper = "upper" if code & 0x08 else "lower"
    low = code & 0x07
    if code < 0x50:
        if low == 0:
            return f"{upper}_limit"
        if low == 1:
            return f"{upper}_limit_exceed_count"
        return f"{upper}_limit_exceed_time"
    if code < 0x60:
        return f"{upper}_limit_exceed_duration"
    if code < 0x68:
        return "limit_exceed_duration"
    return f"{upper}_limit_value"


@dataclass(frozen=True, slots=True)
class VifResult:
    info: VifInfo
    error_state: bool
    offset: bool  # additive correction constant (value is an offset, not a reading)


def combine(info: VifInfo, vifes: Sequence[int]) -> VifResult:
    """Apply the combinable (orthogonal) VIFEs to ``info``; unknown codes are kept in
    the quantity's name so such a record never passes for the plain quantity."""
    error = False
    offset = False
    for raw in vifes:
        code = raw & 0x7F
        if code == 0x7F:  # the rest is manufacturer specific
            info = replace(info, quantity=f"{info.quantity}_manufacturer")
            break
        if code == 0x00:
            continue
        if code in _ERROR_CODES:  # record error codes (slave to master)
            error = True
        elif code in _RATE:
            info = replace(
                info, quantity=f"{info.quantity}_rate", unit=f"{info.unit}/{_RATE[code]}"
            )
        elif code in _NAMED:
            info = replace(info, quantity=f"{info.quantity}_{_NAMED[code]}")
        elif 0x40 <= code <= 0x6F:
            info = replace(info, quantity=f"{info.quantity}_{_limit_name(code)}")
        elif 0x70 <= code <= 0x77:
            info = replace(info, exp=info.exp + (code & 0x07) - 6)
        elif 0x78 <= code <= 0x7B:
            offset = True
            info = replace(info, quantity=f"{info.quantity}_offset", exp=(code & 0x03) - 3)
        elif code == 0x7D:
            info = replace(info, exp=info.exp + 3)
        else:
            info = replace(info, quantity=f"{info.quantity}_vife{code:02x}")
    return VifResult(info, error, offset)


def describe(vif: int, vifes: Sequence[int]) -> VifResult:
    """The meaning of a VIF and its VIFEs (plain-text VIFs are handled by the caller).
    Cached: a meter sends the same few VIF chains in every telegram."""
    return _describe(vif, tuple(vifes))


@functools.lru_cache(maxsize=1024)
def _describe(vif: int, vifes: tuple[int, ...]) -> VifResult:
    if len(vifes) > MAX_VIFES:
        raise VifError(f"too many VIFEs ({len(vifes)} > {MAX_VIFES})")
    code = vif & 0x7F
    if vif in (0xFD, 0xFB):
        if not vifes:
            raise VifError(f"VIF 0x{vif:02X} without its extension byte")
        ext = vifes[0] & 0x7F
        info = _ext_fd(ext) if vif == 0xFD else _ext_fb(ext)
        return combine(info, vifes[1:])
    if code == 0x7F:  # manufacturer specific: the VIFEs are the manufacturer's too
        return VifResult(VifInfo("manufacturer_specific", ""), False, False)
    if code == 0x7C:
        return combine(VifInfo("plain_text", ""), vifes)
    if code in (0x7B, 0x7D):  # 0x7B/0x7D without the extension bit: reserved
        return VifResult(VifInfo("reserved", ""), False, False)
    return combine(_primary(code), vifes)
