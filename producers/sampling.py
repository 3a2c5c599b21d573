"""Deterministic sampling of requests by request id.

A request is kept when the first 8 bytes of BLAKE2b(request_id), read as an unsigned big-endian integer,
are below ``rate * 2**64``. The decision depends on the request id alone: every process, replica and
restart decides the same way, so a sampled request is logged by all services that see it (the shop's
feedback events can sample the same ids), and the kept sets are nested: an id kept at rate 0.1 is kept at
any rate above 0.1. (Python's ``hash()`` is salted per process and would not give either property.)

>>> s = Sampler(0.5)
>>> s.keep("req-1") == Sampler(0.5).keep("req-1")
True
>>> Sampler(1.0).keep("anything"), Sampler(0.0).keep("anything")
(True, False)
"""

from __future__ import annotations

from hashlib import blake2b

_SPACE = 1 << 64


class Sampler:
    """Keeps a fraction ``rate`` (0 ≤ rate ≤ 1) of request ids, the same ones in every process."""

    __slots__ = ("_threshold", "rate")

    def __init__(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate must be in [0, 1], got {rate}")
        self.rate = rate
        self._threshold = min(_SPACE, int(rate * _SPACE))

    def keep(self, request_id: str) -> bool:
        if self._threshold == _SPACE:  # the default: every request, no hashing on the request path
            return True
        if self._threshold == 0:
            return False
        digest = blake2b(request_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold
