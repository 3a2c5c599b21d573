"""Event-time windows: assignment at boundaries, lateness decisions, replay determinism, restarts, idle partitions."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processors import windows as windows_module
from stream_processors.windows import (
    Clock,
    ManualClock,
    Placement,
    SystemClock,
    Watermark,
    WindowSpec,
)

S = 1_000_000  # µs per second


# ------------------------------------------------------------------------------------------ assignment


@pytest.mark.parametrize(
    ("event_us", "expected"),
    [(0, 0), (9 * S + 999_999, 0), (10 * S, 10), (10 * S + 1, 10), (-1, -10), (-10 * S, -10)],
)
def test_tumbling_boundaries_belong_to_the_next_window(event_us: int, expected: int) -> None:
    assert WindowSpec(10).starts_of(event_us) == (expected,)
    assert WindowSpec(10, hop_s=10).starts_of(event_us) == (expected,)


def test_hopping_assignment_at_boundaries() -> None:
    spec = WindowSpec(size_s=60, hop_s=20)
    assert spec.windows_per_event == 3 and not spec.tumbling
    assert spec.starts_of(60 * S) == (20, 40, 60)
    assert spec.starts_of(60 * S - 1) == (0, 20, 40)
    assert spec.starts_of(79 * S) == (20, 40, 60)
    assert spec.end_us(40) == 100 * S


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_s": 0}, "size must be positive"),
        ({"size_s": -10}, "size must be positive"),
        ({"size_s": 10, "hop_s": 0}, "hop must be positive"),
        ({"size_s": 10, "hop_s": -5}, "hop must be positive"),
        ({"size_s": 10, "hop_s": 3}, "multiple of the hop"),
        ({"size_s": 10, "hop_s": 20}, "must not exceed the size"),
        ({"size_s": 10, "allowed_lateness_s": -1}, "lateness must be >= 0"),
    ],
)
def test_invalid_specs_are_rejected_with_the_reason(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowSpec(**kwargs)


@pytest.mark.parametrize("kwargs", [{"size_s": 1.5}, {"size_s": True}, {"size_s": 10, "hop_s": 5.0}])
def test_non_integer_seconds_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        WindowSpec(**kwargs)  # type: ignore[arg-type]


specs = st.builds(
    lambda hop, n, lateness, tumbling: WindowSpec(hop * n, None if tumbling else hop, lateness),
    st.integers(1, 600),
    st.integers(1, 12),
    st.integers(0, 120),
    st.booleans(),
)
event_times = st.integers(-(10**15), 10**15)


@given(specs, event_times)
def test_every_event_is_in_exactly_size_over_hop_windows_containing_it(spec: WindowSpec, t: int) -> None:
    starts = spec.starts_of(t)
    assert len(starts) == len(set(starts)) == spec.size_s // spec.step_s
    assert list(starts) == sorted(starts)
    for s in starts:
        assert s % spec.step_s == 0
        assert s * S <= t < spec.end_us(s)
    # the neighbouring aligned windows do not contain it
    before, after = starts[0] - spec.step_s, starts[-1] + spec.step_s
    assert not before * S <= t < spec.end_us(before)
    assert not after * S <= t < spec.end_us(after)


# ----------------------------------------------------------------------------------------- lateness


def test_out_of_order_within_lateness_is_accepted_beyond_is_late() -> None:
    w = Watermark(WindowSpec(10, allowed_lateness_s=5))
    assert w.observe(0, 14 * S) == Placement(on_time=(10,), late=())
    assert w.observe(0, 24 * S).on_time == (20,)  # watermark 19 s: [10, 20) still open
    assert w.watermark_us(0) == 19 * S
    assert w.observe(0, 11 * S) == Placement(on_time=(10,), late=())  # 13 s behind, window not closed
    assert w.observe(0, 25 * S).on_time == (20,)  # watermark 20 s: [10, 20) closes now
    assert w.is_closed(0, 10) and not w.is_closed(0, 20)
    late = w.observe(0, 19 * S + 999_999)
    assert late == Placement(on_time=(), late=(10,)) and late.is_late
    assert w.observe(0, 20 * S).on_time == (20,)  # boundary event: next window, open


def test_no_lateness_means_any_earlier_window_is_late() -> None:
    w = Watermark(WindowSpec(10))
    w.observe(0, 20 * S)
    assert w.observe(0, 19 * S).is_late
    assert not w.observe(0, 20 * S).is_late


def test_hopping_event_can_be_late_for_its_old_windows_only() -> None:
    w = Watermark(WindowSpec(30, hop_s=10))
    w.observe(0, 40 * S)  # watermark 40 s: windows ending <= 40 s closed
    placement = w.observe(0, 15 * S)  # in [-10, 20), [0, 30), [10, 40)
    assert placement == Placement(on_time=(), late=(-10, 0, 10))
    placement = w.observe(0, 25 * S)  # in [0, 30), [10, 40), [20, 50)
    assert placement == Placement(on_time=(20,), late=(0, 10))
    assert not placement.is_late


def test_partitions_have_their_own_watermarks() -> None:
    w = Watermark(WindowSpec(10))
    w.observe(0, 100 * S)
    assert not w.observe(1, 5 * S).is_late  # partition 1 is behind, not late
    assert w.observe(0, 5 * S).is_late
    assert w.min_watermark_us() == 5 * S
    assert w.min_watermark_us([0]) == 100 * S
    assert w.min_watermark_us([0, 2]) is None  # partition 2 has seen nothing: nothing is final everywhere
    assert Watermark(WindowSpec(10)).min_watermark_us() is None


def test_pop_closed_returns_each_window_once_in_order() -> None:
    w = Watermark(WindowSpec(10, allowed_lateness_s=2))
    for t in (1, 11, 5):
        w.observe(0, t * S)
    assert w.pop_closed(0) == ()  # watermark 9 s
    w.observe(0, 21 * S)  # watermark 19 s
    assert w.pop_closed(0) == (0,)
    w.observe(0, 35 * S)  # watermark 33 s
    assert w.pop_closed(0) == (10, 20)
    assert w.pop_closed(0) == ()
    assert w.pop_closed(7) == ()
    assert w.closed_windows(0, [0, 30, 20]) == [0, 20]


# ------------------------------------------------------------------------------ replay and restarts


events = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 600 * S)), max_size=200)


def _run(w: Watermark, stream: list[tuple[int, int]]) -> list[tuple[Placement, tuple[int, ...]]]:
    return [(w.observe(p, t), w.pop_closed(p)) for p, t in stream]


@given(specs, events)
def test_replay_makes_the_same_decisions(spec: WindowSpec, stream: list[tuple[int, int]]) -> None:
    assert _run(Watermark(spec), stream) == _run(Watermark(spec), stream)


@given(specs, events, st.data())
def test_restore_after_restart_continues_with_the_same_decisions(
    spec: WindowSpec, stream: list[tuple[int, int]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(stream)))
    uninterrupted = Watermark(spec)
    expected = _run(uninterrupted, stream)

    first = Watermark(spec)
    _run(first, stream[:cut])
    restarted = Watermark(spec)
    for partition in range(4):
        state = first.state(partition)
        if state is not None:
            restarted.restore(
                partition, state.max_event_time_us, watermark_us=state.watermark_us, open_windows=state.open_windows
            )
    assert _run(restarted, stream[cut:]) == expected[cut:]


@given(specs, events)
def test_decisions_match_the_definition(spec: WindowSpec, stream: list[tuple[int, int]]) -> None:
    """Late for a window <=> its end <= (max earlier event time of the partition) - allowed lateness."""
    w = Watermark(spec)
    seen: dict[int, int] = {}
    for p, t in stream:
        placement = w.observe(p, t)
        wm = seen[p] - spec.allowed_lateness_s * S if p in seen else None
        for s in spec.starts_of(t):
            closed = wm is not None and spec.end_us(s) <= wm
            assert (s in placement.late) == closed and (s in placement.on_time) != closed
        seen[p] = max(seen.get(p, t), t)


def test_restore_only_with_max_event_time() -> None:
    w = Watermark(WindowSpec(10, allowed_lateness_s=3))
    w.restore(2, 50 * S)
    assert w.watermark_us(2) == 47 * S
    assert w.observe(2, 36 * S).is_late
    assert not w.observe(2, 41 * S).is_late
    w.restore(2, 10 * S)  # an older checkpoint never moves the watermark back
    assert w.watermark_us(2) == 47 * S
    state = w.state(2)
    assert state is not None and state.max_event_time_us == 50 * S
    assert w.state(9) is None


# ------------------------------------------------------------------------------------- idle partitions


def test_wall_clock_closes_windows_of_idle_partitions() -> None:
    clock = ManualClock(start_us=1_000 * S)
    w = Watermark(WindowSpec(10, allowed_lateness_s=5))
    w.observe(0, 1_003 * S)  # then partition 0 goes idle
    w.observe(1, 1_004 * S)
    clock.advance(16)  # 1016 s: end 1010 + lateness 5 + grace 2 = 1017 not reached
    assert w.closed_by_wall_clock(clock.now_us(), grace_s=2) == {}
    clock.advance(1)
    assert w.closed_by_wall_clock(clock.now_us(), grace_s=2) == {0: (1000,), 1: (1000,)}
    assert w.closed_by_wall_clock(clock.now_us(), grace_s=2) == {}  # each window once
    assert w.observe(0, 1_009 * S).is_late  # a straggler does not reopen the emitted window
    assert w.pop_closed(0) == ()
    with pytest.raises(ValueError):
        w.closed_by_wall_clock(clock.now_us(), grace_s=-1)


def test_clocks() -> None:
    clocks: list[Clock] = [SystemClock(), ManualClock(5)]
    assert clocks[0].now_us() > 1_600_000_000 * S
    manual = ManualClock(5)
    manual.advance(0.5)
    assert manual.now_us() == 5 + S // 2
    with pytest.raises(ValueError):
        manual.advance(-1)


def test_docstring_examples() -> None:
    result = doctest.testmod(windows_module)
    assert result.attempted > 0
    assert result.failed == 0
