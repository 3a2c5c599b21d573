"""Errors of the training package: one root, subclasses by what the caller does about them."""

from __future__ import annotations

from pathlib import Path


class TrainingError(Exception):
    """Root of training errors."""


class DataError(TrainingError):
    """A behaviour file cannot be used: missing, unreadable, empty, or mostly malformed. Fix the input."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class VersionExistsError(TrainingError):
    """The model version directory already exists; pick another version or reuse it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists")
        self.path = path
