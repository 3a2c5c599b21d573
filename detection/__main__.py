"""``python -m detection --input FILE.csv --output FILE.csv [--detector NAME]`` (also ``recwatch detect``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from detection.detectors import DETECTORS
from detection.nab_csv import DEFAULT_DETECTOR, detect_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detect", description="Score a timestamp,value CSV row by row.")
    parser.add_argument("--input", required=True, help="NAB-style CSV with a timestamp,value header")
    parser.add_argument("--output", required=True, help="CSV to write: timestamp,value,anomaly_score")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTORS))
    args = parser.parse_args(argv)
    n = detect_file(args.input, args.output, args.detector)
    print(f"scored {n} rows with {args.detector} -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
