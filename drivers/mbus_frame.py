"""Wired M-Bus link-layer frames (EN 13757-2): pure bytes, no I/O.

Three frame formats travel on the line:

* single character ``E5`` (acknowledge),
* short frame ``10 C A CS 16``,
* long / control frame ``68 L L 68 C A CI data CS 16``, where ``L`` counts the bytes
  from ``C`` to the end of ``data`` (so ``L >= 3``; a control frame is a long frame
  without data) and ``CS`` is the sum of ``C .. data`` modulo 256.

``parse_frame`` checks everything (start, both lengths, second start, checksum, stop,
exact size) and raises :class:`MbusFrameError` with the reason; ``frame_length`` tells a
reader how many bytes the frame starting at ``buf[0]`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- characters ------------------------------------------------------------------------
ACK = 0xE5
SHORT_START = 0x10
LONG_START = 0x68
STOP = 0x16

# --- C field -----------------------------------------------------------------------------
C_SND_NKE = 0x40  # reset the link; the slave acks with E5
C_REQ_UD2 = 0x5B  # request class-2 data (FCV set, FCB clear)
C_REQ_UD2_FCB = 0x7B  # the same with FCB set
C_REQ_UD1 = 0x5A
C_SND_UD = 0x53  # send user data (FCV set, FCB clear)
C_SND_UD_FCB = 0x73
C_RSP_UD = 0x08  # respond user data (slave to master)
C_FCB = 0x20  # frame count bit (master to slave)
C_FCV = 0x10  # frame count bit valid
C_ACD = 0x20  # access demand (slave to master)
C_DFC = 0x10  # data flow control (slave to master)

# --- CI field ------------------------------------------------------------------------------
CI_SELECT = 0x52  # SND_UD: select a slave by its secondary address
CI_APP_RESET = 0x50
CI_RSP_LONG = 0x72  # variable data structure, long header
CI_RSP_SHORT = 0x7A  # variable data structure, short header
CI_RSP_ERROR = 0x70  # application error
CI_RSP_FIXED = 0x73  # fixed data structure (not decoded here)

# --- addresses ---------------------------------------------------------------------------
ADDR_MAX_PRIMARY = 250
ADDR_SELECTED = 253  # the slave selected by secondary address
ADDR_TEST = 254  # every slave answers (point-to-point test)
ADDR_BROADCAST = 255  # every slave listens, none answers

SHORT_LEN = 5
LONG_OVERHEAD = 6  # 68 L L 68 ... CS 16 around the L bytes
MAX_L = 255


class MbusFrameError(ValueError):
    """A byte sequence that is not one valid M-Bus frame; the message says why."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The single character E5."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A short frame (``ci`` None, ``data`` empty) or a long/control frame."""

    c: int
    a: int
    ci: int | None = None
    data: bytes = b""

    @property
    def is_long(self) -> bool:
        return self.ci is not None

    def is_rsp_ud(self) -> bool:
        """True for RSP_UD (0x08), whatever its ACD/DFC bits say."""
        return self.c & ~(C_ACD | C_DFC) & 0xFF == C_RSP_UD


def checksum(body: bytes) -> int:
    """Sum of the bytes modulo 256 (EN 13757-2 CS)."""
    return sum(body) & 0xFF


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be a byte 0..255, got {value}")


def short_frame(c: int, a: int) -> bytes:
    """``10 C A CS 16``."""
    _check_byte("c", c)
    _check_byte("a", a)
    return bytes((SHORT_START, c, a, (c + a) & 0xFF, STOP))


def long_frame(c: int, a: int, ci: int, data: bytes = b"") -> bytes:
    """``68 L L 68 C A CI data CS 16`` (a control frame when ``data`` is empty)."""
    _check_byte("c", c)
    _check_byte("a", a)
    _check_byte("ci", ci)
    body = bytes((c, a, ci)) + bytes(data)
    if len(body) > MAX_L:
        raise ValueError(f"user data too long for one frame: {len(data)} > {MAX_L - 3} bytes")
    n = len(body)
    return bytes((LONG_START, n, n, LONG_START)) + body + bytes((checksum(body), STOP))


def snd_nke(a: int) -> bytes:
    return short_frame(C_SND_NKE, a)


def req_ud2(a: int, fcb: bool) -> bytes:
    return short_frame(C_REQ_UD2_FCB if fcb else C_REQ_UD2, a)


def frame_length(buf: bytes) -> int | None:
    """Bytes needed by the frame starting at ``buf[0]``; None while not yet known.

    Raises :class:`MbusFrameError` when ``buf[0]`` cannot start a frame or the length
    bytes of a long frame disagree or are too small, so a reader can drop a byte and
    resynchronise.
    """
    if not buf:
        return None
    first = buf[0]
    if first == ACK:
        return 1
    if first == SHORT_START:
        return SHORT_LEN
    if first != LONG_START:
        raise MbusFrameError(f"bad start byte 0x{first:02X}")
    if len(buf) < 3:
        return None
    if buf[1] != buf[2]:
        raise MbusFrameError(f"length mismatch: L fields 0x{buf[1]:02X} and 0x{buf[2]:02X}")
    if buf[1] < 3:
        raise MbusFrameError(f"length {buf[1]} too small for a long frame (at least 3)")
    return buf[1] + LONG_OVERHEAD


def parse_frame(buf: bytes) -> Frame | Ack:
    """Decode exactly one frame; anything else raises :class:`MbusFrameError`."""
    buf = bytes(buf)
    need = frame_length(buf)
    if need is None:
        raise MbusFrameError(f"cut short: {len(buf)} bytes, no complete frame header")
    if len(buf) < need:
        raise MbusFrameError(f"cut short: {len(buf)} of {need} bytes")
    if len(buf) > need:
        raise MbusFrameError(f"trailing bytes: {len(buf)} bytes for a {need}-byte frame")
    if buf[0] == ACK:
        return Ack()
    if buf[-1] != STOP:
        raise MbusFrameError(f"missing stop byte: 0x{buf[-1]:02X} instead of 0x16")
    if buf[0] == SHORT_START:
        body = buf[1:3]
        if checksum(body) != buf[3]:
            raise MbusFrameError(f"checksum: got 0x{buf[3]:02X}, computed 0x{checksum(body):02X}")
        return Frame(c=body[0], a=body[1])
    if buf[3] != LONG_START:
        raise MbusFrameError(f"bad second start byte 0x{buf[3]:02X}")
    body = buf[4:-2]
    if checksum(body) != buf[-2]:
        raise MbusFrameError(f"checksum: got 0x{buf[-2]:02X}, computed 0x{checksum(body):02X}")
    return Frame(c=body[0], a=body[1], ci=body[2], data=body[3:])


def select_secondary_data(
    id_pattern: str, man: int = 0xFFFF, ver: int = 0xFF, med: int = 0xFF
) -> bytes:
    """The 8 data bytes of a CI 0x52 select: ID (BCD, LSB first) MAN VER MED.

    ``id_pattern`` has 8 characters, each a digit or ``F``/``f`` (wildcard nibble),
    most significant digit first, as printed on the meter. ``man`` is the packed
    manufacturer code (0xFFFF = any), ``ver``/``med`` 0xFF = any.
    """
    if len(id_pattern) != 8 or any(ch not in "0123456789Ff" for ch in id_pattern):
        raise ValueError(f"id pattern must be 8 digits or F wildcards, got {id_pattern!r}")
    if not 0 <= man <= 0xFFFF:
        raise ValueError(f"manufacturer code must be 0..0xFFFF, got {man}")
    _check_byte("ver", ver)
    _check_byte("med", med)
    nibbles = [int(ch, 16) for ch in id_pattern]
    id_bytes = bytes((nibbles[i] << 4) | nibbles[i + 1] for i in range(6, -1, -2))
    return id_bytes + man.to_bytes(2, "little") + bytes((ver, med))


def select_secondary(id_pattern: str, man: int = 0xFFFF, ver: int = 0xFF, med: int = 0xFF) -> bytes:
    """The whole SND_UD frame selecting a slave by its secondary address."""
    data = select_secondary_data(id_pattern, man, ver, med)
    return long_frame(C_SND_UD, ADDR_SELECTED, CI_SELECT, data)
