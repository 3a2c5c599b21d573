"""Run a detector over the NAB corpus and print the three NAB scores next to the published ones.

Files are scored in at most ``--jobs`` worker processes (default 2: the target machines have 2 cores); the
whole run is bounded by ``--timeout`` seconds (the pool is terminated and the run fails past it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.nab.scoring import FileResult, ProfileScore, score_corpus, window_rows
from detection.detectors import DETECTORS, make_detector
from detection.nab_csv import parse_timestamp, read_series

__all__ = ["PUBLISHED", "RunResult", "main", "run_corpus"]

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"

# Standard / reward_low_FP_rate / reward_low_FN_rate on the full corpus (NAB v1.1 scoreboard).
PUBLISHED: dict[str, tuple[float, float, float]] = {
    "ARTime": (74.9, 65.1, 80.4),
    "Numenta HTM": (70.5, 62.6, 75.2),
    "CAD OSE": (69.9, 67.0, 73.2),
    "KNN CAD": (58.0, 43.4, 64.8),
    "Twitter ADVec": (47.1, 33.6, 53.5),
}
PROFILE_ORDER = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True, slots=True)
class RunResult:
    detector: str
    files: int
    rows: int
    seconds: float  # detector time summed over files (CPU-bound, excludes CSV parsing)
    scores: dict[str, ProfileScore]

    @property
    def us_per_row(self) -> float:
        return 1e6 * self.seconds / max(self.rows, 1)


def _score_file(args: tuple[str, str]) -> tuple[list[float], list[float], float]:
    """Worker: (timestamps, scores, detector seconds) of one file."""
    path, detector_name = args
    rows = list(read_series(path))
    detector = make_detector(detector_name)
    update = detector.update
    t0 = time.perf_counter()
    scores = [update(ts, value) for _, ts, value in rows]
    elapsed = time.perf_counter() - t0
    return [ts for _, ts, _ in rows], scores, elapsed


def run_corpus(data: Path, detector_name: str, jobs: int = 2, timeout_s: float = 1800.0) -> RunResult:
    """Score every labelled file of the corpus under ``data`` with a fresh detector each."""
    labels: dict[str, list[list[str]]] = json.loads((data / "labels" / "combined_windows.json").read_text())
    names = sorted(labels)
    tasks = [(str(data / "data" / name), detector_name) for name in names]
    jobs = max(1, min(jobs, 2, len(tasks)))
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        pending = pool.map_async(_score_file, tasks, chunksize=1)
        outputs = pending.get(timeout=timeout_s)  # raises multiprocessing.TimeoutError; the pool is terminated
    results: list[FileResult] = []
    rows = 0
    seconds = 0.0
    for name, (timestamps, scores, elapsed) in zip(names, outputs, strict=True):
        windows = [(parse_timestamp(a), parse_timestamp(b)) for a, b in labels[name]]
        results.append(FileResult(name, scores, window_rows(timestamps, windows)))
        rows += len(scores)
        seconds += elapsed
    return RunResult(detector_name, len(results), rows, seconds, score_corpus(results))


def _table(results: Sequence[RunResult]) -> str:
    lines = [f"{'detector':<24}{'standard':>10}{'low FP':>10}{'low FN':>10}{'us/row':>10}"]
    for r in results:
        s = [r.scores[p].score for p in PROFILE_ORDER]
        lines.append(f"{r.detector:<24}{s[0]:>10.1f}{s[1]:>10.1f}{s[2]:>10.1f}{r.us_per_row:>10.1f}")
    lines.append("published (full corpus):")
    for name, (a, b, c) in PUBLISHED.items():
        lines.append(f"{name:<24}{a:>10.1f}{b:>10.1f}{c:>10.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nab", description=__doc__)
    parser.add_argument("--detector", action="append", choices=sorted(DETECTORS), help="repeatable; default all")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB directory with data/ and labels/")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (at most 2)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound per detector run, seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = [run_corpus(args.data, name, args.jobs, args.timeout) for name in args.detector or sorted(DETECTORS)]
    if args.json:
        payload = [
            {
                "detector": r.detector,
                "files": r.files,
                "rows": r.rows,
                "us_per_row": r.us_per_row,
                "scores": {p: asdict(r.scores[p]) for p in PROFILE_ORDER},
            }
            for r in results
        ]
        json.dump({"results": payload, "published": PUBLISHED}, sys.stdout, indent=2, default=str)
        print()
    else:
        print(_table(results))
    return 0
