"""The pipeline benchmark (``recwatch bench pipeline``): worker events/s and end-to-end lag, against the raw
confluent-kafka consume rate and Quix Streams.

``main(argv)`` in :mod:`benchmarks.pipeline.run` is the entry point; see docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (imports the harness lazily, so importing this package stays cheap)."""
    from benchmarks.pipeline.run import main as run_main

    return run_main(argv)
