"""Event-time windows with allowed lateness and a per-partition watermark: which windows an event counts in.

Pure logic for the sink: no Kafka, no Faust, no I/O. Times are integer µs for events (``event_time_us``) and
integer Unix seconds for window starts; windows are aligned to the epoch (``start % hop_s == 0``) and half-open,
``[start, start + size)``, so an event exactly on a boundary belongs to the next window.

Watermark, per Kafka partition: ``watermark = max event time seen in the partition - allowed lateness``. A window
is *closed* in a partition once ``window end <= watermark``; an event is *late* for a window that is already closed
when the event is processed. The decisions depend only on the sequence of event times of the partition (and the
restored state), so replaying the same offsets makes the same decisions. An idle partition's watermark does not
move (it advances only with events of its own partition); a window is final across partitions once it is closed
in every partition (:meth:`Watermark.min_watermark_us`), which an idle partition holds back. For idle partitions
:meth:`Watermark.closed_by_wall_clock` closes windows by processing time instead; those closes depend on the wall
clock and so are not replayed deterministically.

>>> w = Watermark(WindowSpec(size_s=10, allowed_lateness_s=5))
>>> w.observe(0, 12_000_000).on_time  # window [10, 20)
(10,)
>>> w.observe(0, 26_000_000).on_time, w.pop_closed(0)  # watermark 21 s: [10, 20) is final
((20,), (10,))
>>> w.observe(0, 19_000_000).late  # its window closed already
(10,)
>>> w.observe(0, 22_000_000).on_time  # out of order, but within the allowed lateness
(20,)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "Clock",
    "ManualClock",
    "PartitionState",
    "Placement",
    "SystemClock",
    "Watermark",
    "WindowSpec",
]

_US = 1_000_000


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of seconds, got {value!r}")
    return value


@dataclass(frozen=True)
class WindowSpec:
    """Window size and hop in seconds, and how long after its end a window still takes events.

    Tumbling when ``hop_s`` is None or equals ``size_s``; hopping (each event in ``size_s // hop_s`` windows)
    when ``hop_s`` divides ``size_s``.
    """

    size_s: int
    hop_s: int | None = None
    allowed_lateness_s: int = 0

    def __post_init__(self) -> None:
        size = _check_int("size_s", self.size_s)
        if size <= 0:
            raise ValueError(f"window size must be positive, got size_s={size}")
        if self.hop_s is not None:
            hop = _check_int("hop_s", self.hop_s)
            if hop <= 0:
                raise ValueError(f"window hop must be positive, got hop_s={hop}")
            if hop > size:
                raise ValueError(f"window hop must not exceed the size (gaps would drop events): {hop} > {size}")
            if size % hop:
                raise ValueError(f"window size must be a multiple of the hop, got size_s={size}, hop_s={hop}")
        lateness = _check_int("allowed_lateness_s", self.allowed_lateness_s)
        if lateness < 0:
            raise ValueError(f"allowed lateness must be >= 0, got allowed_lateness_s={lateness}")

    @property
    def step_s(self) -> int:
        """Seconds between consecutive window starts (the size for tumbling windows)."""
        return self.size_s if self.hop_s is None else self.hop_s

    @property
    def tumbling(self) -> bool:
        return self.step_s == self.size_s

    @property
    def windows_per_event(self) -> int:
        return self.size_s // self.step_s

    def starts_of(self, event_time_us: int) -> tuple[int, ...]:
        """Start seconds of the windows containing the event, ascending (one for tumbling windows)."""
        step = self.step_s
        last = (event_time_us // _US) // step * step
        if step == self.size_s:
            return (last,)
        return tuple(range(last - self.size_s + step, last + 1, step))

    def end_us(self, window_start_s: int) -> int:
        """The (exclusive) end of the window starting at ``window_start_s``, in µs."""
        return (window_start_s + self.size_s) * _US


class Placement(NamedTuple):
    """Where one event counts: windows still open (``on_time``) and windows already closed (``late``).

    A named tuple: built once per event on the hot path, where a frozen dataclass costs twice as much.
    """

    on_time: tuple[int, ...]
    late: tuple[int, ...]

    @property
    def is_late(self) -> bool:
        """True when the event counts in no window (all of them closed); count it as late and drop it."""
        return not self.on_time


@dataclass(frozen=True)
class PartitionState:
    """What to checkpoint with a partition's committed offset to make the same decisions after a restart."""

    max_event_time_us: int
    watermark_us: int
    open_windows: tuple[int, ...] = ()


@dataclass
class _Partition:
    max_event_time_us: int
    watermark_us: int
    open_windows: set[int] = field(default_factory=set)


class Watermark:
    """Per-partition watermarks and the windows each partition has open.

    Not thread-safe: one per sink, fed in offset order per partition.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._lateness_us = spec.allowed_lateness_s * _US
        self._size_us = spec.size_s * _US
        self._partitions: dict[int, _Partition] = {}

    # ------------------------------------------------------------------------------------------ events

    def observe(self, partition: int, event_time_us: int) -> Placement:
        """Place one event, then advance the partition's watermark with its time.

        An event is never late for its own watermark advance: its windows end after its time.
        """
        starts = self.spec.starts_of(event_time_us)
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(event_time_us, event_time_us - self._lateness_us)
        watermark = state.watermark_us
        size_us = self._size_us
        if len(starts) == 1:  # tumbling: the common case, without the generator
            placement = Placement(starts, ()) if starts[0] * _US + size_us > watermark else Placement((), starts)
        else:
            on_time = tuple(s for s in starts if s * _US + size_us > watermark)
            placement = Placement(on_time, starts[: len(starts) - len(on_time)])  # closed ones are the oldest
        state.open_windows.update(placement.on_time)
        if event_time_us > state.max_event_time_us:
            state.max_event_time_us = event_time_us
            state.watermark_us = max(watermark, event_time_us - self._lateness_us)
        return placement

    def pop_closed(self, partition: int) -> tuple[int, ...]:
        """Open windows of the partition that its watermark has closed, ascending; each is returned once.

        Call after :meth:`observe` and emit these windows' aggregates as final.
        """
        state = self._partitions.get(partition)
        if state is None:
            return ()
        closed = tuple(sorted(s for s in state.open_windows if self.spec.end_us(s) <= state.watermark_us))
        state.open_windows.difference_update(closed)
        return closed

    def closed_by_wall_clock(self, now_us: int, grace_s: int) -> dict[int, tuple[int, ...]]:
        """Close, in every partition, open windows whose end + allowed lateness + ``grace_s`` <= ``now_us``.

        For partitions that went idle: their watermark would never close them. The partition's watermark is
        raised to the end of the windows closed here, so later events for them count as late instead of opening
        them again. Depends on the wall clock, so a replay may decide differently. Returns ``{partition: starts}``
        for partitions with windows closed.
        """
        if grace_s < 0:
            raise ValueError(f"grace must be >= 0, got grace_s={grace_s}")
        deadline_us = now_us - self._lateness_us - grace_s * _US
        out: dict[int, tuple[int, ...]] = {}
        for partition, state in self._partitions.items():
            closed = tuple(sorted(s for s in state.open_windows if self.spec.end_us(s) <= deadline_us))
            if closed:
                state.open_windows.difference_update(closed)
                state.watermark_us = max(state.watermark_us, self.spec.end_us(closed[-1]))
                out[partition] = closed
        return out

    def forget(self, partition: int) -> None:
        """Drop a partition's state (it moved to another worker); :meth:`restore` it when it comes back."""
        self._partitions.pop(partition, None)

    # ----------------------------------------------------------------------------------------- queries

    def watermark_us(self, partition: int) -> int | None:
        """The partition's watermark, or None before its first event."""
        state = self._partitions.get(partition)
        return None if state is None else state.watermark_us

    def is_closed(self, partition: int, window_start_s: int) -> bool:
        """Whether the window no longer takes events of the partition."""
        watermark = self.watermark_us(partition)
        return watermark is not None and self.spec.end_us(window_start_s) <= watermark

    def closed_windows(self, partition: int, window_starts: Iterable[int]) -> list[int]:
        """Those of ``window_starts`` (e.g. the caller's open aggregates) that the partition has closed."""
        return [s for s in window_starts if self.is_closed(partition, s)]

    def min_watermark_us(self, partitions: Iterable[int] | None = None) -> int | None:
        """The lowest watermark over ``partitions`` (default: all seen); None when one has seen no event.

        A window is final across the partitions once its end <= this value.
        """
        watermarks = [self.watermark_us(p) for p in (self._partitions if partitions is None else partitions)]
        if not watermarks or any(w is None for w in watermarks):
            return None
        return min(w for w in watermarks if w is not None)

    # ---------------------------------------------------------------------------------------- restarts

    def state(self, partition: int) -> PartitionState | None:
        """The partition's state to checkpoint with its offset (None before its first event)."""
        s = self._partitions.get(partition)
        if s is None:
            return None
        return PartitionState(s.max_event_time_us, s.watermark_us, tuple(sorted(s.open_windows)))

    def restore(
        self,
        partition: int,
        max_event_time_us: int,
        *,
        watermark_us: int | None = None,
        open_windows: Iterable[int] = (),
    ) -> None:
        """Resume a partition after a restart from its checkpointed max event time (and optionally watermark).

        Replaying the offsets after the checkpoint then makes the decisions the first run made. Never moves a
        watermark back.
        """
        floor = max_event_time_us - self._lateness_us
        watermark = floor if watermark_us is None else max(floor, watermark_us)
        state = self._partitions.get(partition)
        if state is None:
            self._partitions[partition] = _Partition(max_event_time_us, watermark, set(open_windows))
            return
        state.max_event_time_us = max(state.max_event_time_us, max_event_time_us)
        state.watermark_us = max(state.watermark_us, watermark)
        state.open_windows.update(open_windows)


# ---------------------------------------------------------------------------------------------- clocks


class Clock(Protocol):
    """Wall time for processing-time decisions (:meth:`Watermark.closed_by_wall_clock`)."""

    def now_us(self) -> int: ...


class SystemClock:
    """The system's wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000


class ManualClock:
    """A clock tests move by hand, so no test sleeps for a window to close."""

    def __init__(self, start_us: int = 0) -> None:
        self._now_us = start_us

    def now_us(self) -> int:
        return self._now_us

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        self._now_us += round(seconds * _US)
