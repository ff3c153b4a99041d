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


def test_a_backward_step_is_placed_by_the_monotonic_clock_until_accepted() -> None:
    st = ReadingStamper(confirm_s=20.0)
    assert len(st.push(rd(1000.0, 1.0, True))) == 1
    assert len(st.push(rd(1001.0, 2.0, True))) == 1
    # the wall clock steps back 30 s: placed on the monotonic time line, flagged
    assert [(ts, sorted(f)) for _, ts, f in st.push(rd(972.0, 3.0, True))] == [
        (1002.0, ["clock_step"])
    ]
    assert st.steps == 1 and st.last_step_s == -30.0
    assert [ts for _, ts, _ in st.push(rd(982.0, 13.0, True))] == [1012.0]
    # it persists for confirm_s and is small: accepted; the time line never goes back, so
    # readings up to the last one placed are dropped
    assert st.push(rd(1000.0, 31.0, True)) == [] and st.accepted == 1
    assert st.push(rd(1012.0, 43.0, True)) == []
    assert [(ts, f) for _, ts, f in st.push(rd(1013.0, 44.0, True))] == [(1013.0, frozenset())]
    # other devices have their own time line
    assert len(st.push(rd(1013.5, 44.5, True, dev="dp1"))) == 1
    assert st.steps == 1


def test_a_forward_step_never_books_the_future() -> None:
    """The wall clock jumps 10 minutes ahead for 4 seconds (issue 13 item 4): the readings
    stay on the monotonic time line, flagged; then the wall clock agrees again."""
    st = ReadingStamper()
    st.push(rd(1000.0, 1.0, True))
    got = [st.push(rd(1000.0 + 600 + k, 1.0 + k, True)) for k in range(1, 5)]
    assert [[(ts, sorted(f)) for _, ts, f in o] for o in got] == [
        [(1000.0 + k, ["clock_step"])] for k in range(1, 5)
    ]
    assert st.steps == 1 and st.last_step_s == 600.0
    assert [(ts, f) for _, ts, f in st.push(rd(1005.0, 6.0, True))] == [(1005.0, frozenset())]
    assert st.accepted == 0


def test_a_year_step_is_never_accepted() -> None:
    st = ReadingStamper(confirm_s=10.0)
    st.push(rd(1000.0, 1.0, True))
    year = 365 * 86400.0
    for k in range(1, 100):
        ((_, ts, f),) = st.push(rd(1000.0 + year + k, 1.0 + k, True))
        assert ts == 1000.0 + k and f == {"clock_step"}
    assert st.steps == 1 and st.accepted == 0


def test_a_small_persistent_forward_step_is_accepted() -> None:
    st = ReadingStamper(confirm_s=10.0)
    st.push(rd(1000.0, 1.0, True))
    out = [st.push(rd(1030.0 + k, 1.0 + k, True))[0] for k in range(1, 13)]
    assert [ts for _, ts, _ in out[:10]] == [1000.0 + k for k in range(1, 11)]
    assert out[10][1] == 1041.0 and st.accepted == 1
    assert out[11][1:] == (1042.0, frozenset())
