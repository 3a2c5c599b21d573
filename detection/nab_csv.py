"""Score a NAB-style CSV (``timestamp,value``) row by row, with no look-ahead, through a registered detector."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from detection.detectors import make_detector

__all__ = ["DEFAULT_DETECTOR", "detect_file", "parse_timestamp", "read_series"]

DEFAULT_DETECTOR = "seasonal_shift"


def parse_timestamp(text: str) -> float:
    """Epoch seconds of an ISO timestamp; naive timestamps are taken as UTC."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_series(path: str | Path) -> Iterator[tuple[str, float, float]]:
    """Yield (timestamp text, epoch s, value) per row of a ``timestamp,value`` CSV, lazily."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not row:
                continue
            yield row[0], parse_timestamp(row[0]), float(row[1])


def detect_file(input_path: str | Path, output_path: str | Path, detector_name: str = DEFAULT_DETECTOR) -> int:
    """Stream ``input_path`` through a fresh detector and write ``timestamp,value,anomaly_score``; return rows.

    Each row is scored before the next is read, so a score never depends on later rows.
    """
    detector = make_detector(detector_name)
    n = 0
    with open(output_path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["timestamp", "value", "anomaly_score"])
        for text, ts, value in read_series(input_path):
            score = detector.update(ts, value)
            writer.writerow([text, repr(value), repr(score)])
            n += 1
    return n
