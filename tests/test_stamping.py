"""Clock handling of readings: pure tests of agent.stamping."""

from __future__ import annotations

from agent.stamping import ReadingStamper
from drivers.types import Reading


def rd(ts: float, mono: float, synced: bool, dev: str = "hm1") -> Reading:
    return Reading(device=dev, role="heat_meter", ts=ts, mono=mono, synced=synced, ok=True)


def test_unsynced_readings_are_held_then_restamped_by_the_monotonic_clock() -> None:
    st = ReadingStamper()
    # the clock says 1970 at boot; three readings a second apart, then NTP steps it
    assert st.push(rd(100.0, 10.0, False)) == []
    assert st.push(rd(101.0, 11.0, False)) == []
    out = st.push(rd(1_700_000_000.0, 12.0, True))
    assert [(ts, sorted(f)) for _, ts, f in out] == [
        (1_699_999_998.0, ["clock_unsynced"]),
        (1_699_999_999.0, ["clock_unsynced"]),
        (1_700_000_000.0, []),
    ]
    # once synchronised, a later loss of NTP status does not hold readings again
    assert [ts for _, ts, _ in st.push(rd(1_700_000_001.0, 13.0, False))] == [1_700_000_001.0]


def test_held_readings_are_bounded_and_counted() -> None:
    st = ReadingStamper(max_held=3)
    for k in range(5):
        st.push(rd(float(k), float(k), False))
    out = st.push(rd(1_700_000_000.0, 5.0, True))
    assert len(out) == 4 and st.dropped_unsynced == 2
    assert [ts for _, ts, _ in out] == [
        1_700_000_000.0 - 3.0,
        1_700_000_000.0 - 2.0,
        1_700_000_000.0 - 1.0,
        1_700_000_000.0,
    ]


def test_backward_step_never_goes_back_in_time_per_device() -> None:
    st = ReadingStamper()
    assert len(st.push(rd(1000.0, 1.0, True))) == 1
    assert len(st.push(rd(1001.0, 2.0, True))) == 1
    # the clock steps back 30 s: readings up to the old time are dropped, then flow again
    assert st.push(rd(972.0, 3.0, True)) == []
    assert st.steps == 1 and st.dropped_backward == 1 and st.last_step_s == -30.0
    assert st.push(rd(1001.0, 32.0, True)) == []
    assert [ts for _, ts, _ in st.push(rd(1002.0, 33.0, True))] == [1002.0]
    # other devices have their own time line
    assert len(st.push(rd(990.0, 33.5, True, dev="dp1"))) == 1


def test_forward_step_is_counted_and_kept() -> None:
    st = ReadingStamper()
    st.push(rd(1000.0, 1.0, True))
    out = st.push(rd(4600.0, 2.0, True))
    assert [ts for _, ts, _ in out] == [4600.0] and st.steps == 1 and st.last_step_s == 3599.0
