"""Errors raised while bringing infrastructure up or down."""

from __future__ import annotations


class InfraError(Exception):
    """Root of infrastructure errors; the message says what to do."""


class MissingToolError(InfraError):
    """A program recwatch needs (java, mvn, apt-get, clickhouse-server) is not installed."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} is required but was not found on PATH. {hint}")
        self.tool = tool


class StartupError(InfraError):
    """A service was started but did not become ready in time; the message names its log file."""
