"""The serving benchmark (``recwatch bench serving``): recwatch against KServe, MLServer and the raw call.

``main(argv)`` in :mod:`benchmarks.serving.run` is the entry point; see docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (imports the harness lazily, so importing this package stays cheap)."""
    from benchmarks.serving.run import main as run_main

    return run_main(argv)
