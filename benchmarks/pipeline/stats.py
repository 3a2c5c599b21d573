"""Pure parts of the pipeline benchmark: rates, end-to-end lags, percentiles and the printed table."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.pipeline.events import Sent

TARGET_EVENTS_PER_S = 50_000.0


@dataclass(frozen=True)
class Row:
    """One measured consumer: ``events`` processed in ``seconds`` of steady state (start-up excluded)."""

    name: str
    events: int
    seconds: float
    note: str = ""
    cpu_s: float | None = None  # CPU time of the measured process(es) over the same span

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def events_per_cpu_s(self) -> float | None:
        return self.events / self.cpu_s if self.cpu_s else None


def visibility_lags(sent: Sequence[Sent], polls: Sequence[tuple[float, Mapping[int, int]]]) -> list[float]:
    """Seconds from each event's produce call to the first poll that saw it in the store.

    ``polls`` are (answer time, {partition: highest stored offset}) in time order. The worker stores each
    partition's offsets in order and each batch atomically, so offset ``o`` is visible once the partition's
    highest stored offset is ``>= o``. Events never seen are left out (``len(result) < len(sent)``).
    """
    by_partition: dict[int, tuple[list[int], list[float]]] = {}
    for at, highest in polls:
        for partition, offset in highest.items():
            offsets, times = by_partition.setdefault(partition, ([], []))
            if not offsets or offset > offsets[-1]:
                offsets.append(offset)
                times.append(at)
    lags = []
    for s in sent:
        offsets, times = by_partition.get(s.partition, ([], []))
        i = bisect.bisect_left(offsets, s.offset)
        if i < len(offsets):
            lags.append(times[i] - s.at)
    return lags


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_table(rows: Sequence[Row], *, baseline: str = "raw consume", target: float = TARGET_EVENTS_PER_S) -> str:
    """The result table: events, seconds, events/s, ratio vs ``baseline``'s events/s and vs ``target``."""
    base = next((r.events_per_s for r in rows if r.name == baseline), math.nan)
    header = ("consumer", "events", "seconds", "events/s", "vs raw", "vs 50k", "ev/cpu-s", "note")
    cells = [header]
    for r in rows:
        rate = r.events_per_s
        per_cpu = r.events_per_cpu_s
        cells.append(
            (
                r.name,
                f"{r.events:,}",
                f"{r.seconds:.2f}",
                f"{rate:,.0f}",
                _ratio(rate, base),
                _ratio(rate, target),
                f"{per_cpu:,.0f}" if per_cpu else "-",
                r.note,
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for n, c in enumerate(cells):
        parts = [c[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(c[1:-1], widths[1:-1], strict=True)), c[-1]]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines) + "\n"


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base <= 0:
        return "-"
    return f"{value / base:.2f}x"
