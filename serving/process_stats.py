"""The serving process's resident set size, cheap enough to stamp into every InferenceEvent.

:class:`ProcessRss` reads ``/proc/self/statm`` at most once per ``max_age_s`` (1 s) of its clock and returns the
cached value in between: a clock call and a comparison per request (~0.1 µs, measured in docs/schemas.md),
one ~10 µs file read per second. Concurrent callers may both refresh at the turn of a second; that costs
one extra read and is harmless. Where ``/proc`` does not exist (not Linux) the value is 0, "unknown".

(``serving.metrics`` exports RSS to Prometheus through prometheus_client's process collector, which reads
``/proc/self/stat`` at scrape time; it has no per-request reader to share.)

>>> rss = ProcessRss(clock=iter([0.0, 0.5, 1.2]).__next__, read=iter([100, 200]).__next__)
>>> rss(), rss(), rss()  # the second call is within 1 s of the first read: cached
(100, 100, 200)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["ProcessRss", "statm_rss_bytes"]

_STATM = "/proc/self/statm"


def statm_rss_bytes() -> int:
    """The calling process's RSS in bytes (``/proc/self/statm``: second field, in pages), or 0 if unreadable."""
    try:
        with open(_STATM, "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ProcessRss:
    """``rss()`` -> the process's RSS in bytes, refreshed at most every ``max_age_s`` seconds of ``clock``.

    ``clock`` (monotonic seconds) and ``read`` (bytes, 0 = unknown) are injected so tests control both.
    Construction does no I/O: the first call reads.
    """

    __slots__ = ("_clock", "_expires", "_max_age_s", "_read", "_value")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], int] = statm_rss_bytes,
        max_age_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._read = read
        self._max_age_s = max_age_s
        self._expires = -float("inf")
        self._value = 0

    def __call__(self) -> int:
        now = self._clock()
        if now >= self._expires:
            self._value = self._read()
            self._expires = now + self._max_age_s
        return self._value
