"""What a ClickHouse version supports, so one schema definition renders DDL for 18.16 and for current releases.

>>> Features((18, 16, 1)).low_cardinality("String")
'String'
>>> Features((26, 9)).low_cardinality("String")
'LowCardinality(String)'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Features:
    version: tuple[int, ...]

    @property
    def ttl(self) -> bool:
        """Table TTL (``TTL event_time + INTERVAL …``): 19.6."""
        return self.version >= (19, 6)

    @property
    def codecs(self) -> bool:
        """Column ``CODEC(...)``: 19.1; Delta/DoubleDelta/Gorilla from 19.4 on."""
        return self.version >= (19, 4)

    @property
    def has_low_cardinality(self) -> bool:
        """``LowCardinality`` without the experimental setting: 19.3 (18.16 needs a setting we do not want)."""
        return self.version >= (19, 3)

    @property
    def datetime64(self) -> bool:
        return self.version >= (20, 1)

    def low_cardinality(self, inner: str) -> str:
        return f"LowCardinality({inner})" if self.has_low_cardinality else inner

    def codec(self, spec: str) -> str:
        """`` CODEC(spec)`` where supported, else nothing (the server's default compression applies)."""
        return f" CODEC({spec})" if self.codecs else ""

    def ttl_clause(self, expression: str) -> str:
        """A ``TTL`` clause where supported; older servers rely on ``store.retention`` dropping partitions."""
        return f"TTL {expression}" if self.ttl else ""
