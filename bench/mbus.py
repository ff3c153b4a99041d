"""Wired M-Bus figures.

``decode_us``: median time to decode one real ~250-byte RSP_UD (a Kamstrup MULTICAL 601
frame published with libmbus, 253 bytes, 27 records and a manufacturer block): link
checks (``parse_frame``) plus the EN 13757-3 records (``decode_user_data``) into scaled
records; the issue's target is <= 300 us on the development machine. As a same-run baseline,
``walk_us`` is a bare loop that only steps over the records (DIF, DIFEs, VIF, VIFEs,
data length: no values, no objects), timed in alternating rounds with the decoder;
``decode_ratio`` = the median over the rounds of decode / walk.

``measure_decode`` is a function so that other M-Bus figures (requests per poll, line
overhead) can join the same last line.

Last line JSON: ``{"decode_us": .., "walk_us": .., "decode_ratio": .., "frame_bytes": ..}``.

    python -m bench.mbus [--repeats 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from drivers.mbus_app import decode_user_data
from drivers.mbus_frame import Frame, parse_frame

# rscada/libmbus test/test-frames/kamstrup_multical_601.hex
MULTICAL_601 = bytes.fromhex(
    "68F7F768081172175885062D2C0804040000000C78175885060406E791000004142CDB00000422D9"
    "0300000459B9270000045D081200000461B1150000042D5B010000142DC0010000043B1F02000014"
    "3B74020000841006000000008420060000000084401400000000848040140000000084C040060000"
    "0000046D1A2F65114406518200004414B2C30000542D26020000543B03040000C4100600000000C4"
    "200600000000C4401400000000C480401400000000C4C0400600000000426C5F1C0F00000000E7E4"
    "0000636600000000000000000000000000005BC9A50234530000E0B20300899C6800000000000100"
    "01070709010300000000009816"
)

_SIZES = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, -1, 6, 0)


def walk(data: bytes) -> int:
    """Step over the records without reading them (the bare baseline)."""
    i, n, count = 12, len(data), 0
    while i < n:
        dif = data[i]
        i += 1
        if dif == 0x2F:
            continue
        if dif in (0x0F, 0x1F):
            break
        while data[i - 1] & 0x80:
            i += 1
        vif = data[i]
        i += 1
        if vif & 0x7F == 0x7C:
            i += 1 + data[i]
        while data[i - 1] & 0x80:
            i += 1
        size = _SIZES[dif & 0x0F]
        i += (1 + data[i]) if size < 0 else size
        count += 1
    return count


def _times_us(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return times


def measure_decode(frame: bytes = MULTICAL_601, repeats: int = 3000) -> dict[str, float]:
    """Median decode time of ``frame`` (link checks + records) and the bare walk."""
    parsed = parse_frame(frame)
    assert isinstance(parsed, Frame) and parsed.ci is not None
    t = decode_user_data(parsed.ci, parsed.data)
    if walk(parsed.data) != len(t.records):
        raise RuntimeError("the baseline walk and the decoder disagree on the records")

    def full() -> None:
        f = parse_frame(frame)
        assert isinstance(f, Frame) and f.ci is not None
        decode_user_data(f.ci, f.data)

    def bare() -> None:
        walk(frame[4:-2][3:])

    for _ in range(200):  # warm up
        full()
        bare()
    # alternate in rounds so a busy moment of the machine hits both alike
    rounds = 10
    per = max(1, repeats // rounds)
    full_t: list[float] = []
    bare_t: list[float] = []
    ratios = []
    for _ in range(rounds):
        f_us = _times_us(full, per)
        b_us = _times_us(bare, per)
        full_t += f_us
        bare_t += b_us
        ratios.append(statistics.median(f_us) / statistics.median(b_us))
    decode_us = statistics.median(full_t)
    walk_us = statistics.median(bare_t)
    return {
        "decode_us": round(decode_us, 1),
        "walk_us": round(walk_us, 1),
        "decode_ratio": round(statistics.median(ratios), 2),
        "frame_bytes": len(frame),
        "records": len(t.records),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3000)
    args = ap.parse_args(argv)
    figures = measure_decode(repeats=args.repeats)
    print(
        f"decode of a {figures['frame_bytes']}-byte frame ({figures['records']} records): "
        f"median {figures['decode_us']} us (target <= 300 us); bare record walk "
        f"{figures['walk_us']} us; ratio {figures['decode_ratio']}",
        flush=True,
    )
    from bench.mbus_line import measure_line  # the line figures (bench/mbus_line.py)

    line = measure_line()
    print(
        f"line at 2400 baud: {line['requests_per_poll']} requests a poll (target 1.0), "
        f"line overhead {line['line_overhead']} (target <= 1.15)",
        flush=True,
    )
    figures.update(requests_per_poll=line["requests_per_poll"], line_overhead=line["line_overhead"])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
