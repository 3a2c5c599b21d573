"""Errors of the producers package. ``publish`` never raises; these come from ``start`` and the spool."""

from __future__ import annotations

from pathlib import Path


class ProducerError(Exception):
    """Root of the errors raised by ``producers``."""


class SpoolError(ProducerError):
    """The on-disk spool at ``path`` cannot be used (I/O error, bad directory)."""

    def __init__(self, path: Path, message: str, *, written: int = 0) -> None:
        super().__init__(f"spool {path}: {message}")
        self.path = path
        self.written = written  # records of the failed append that did reach the disk (a prefix of the batch)


class SpoolLockedError(SpoolError):
    """Another process holds the spool directory; two loggers must not share one (give each replica its own)."""
