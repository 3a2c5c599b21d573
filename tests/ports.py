"""Free loopback ports for test servers, so two test sessions on one machine do not collide."""

from __future__ import annotations

import random

from infra.processes import port_free


def free_ports(count: int = 2, low: int = 20000, high: int = 32000) -> int:
    """A port ``p`` with ``p … p + count - 1`` free, below the ephemeral range (32768+) clients draw from."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(low, high - count, 2)
        if all(port_free(p + i) for i in range(count)):
            return p
    raise RuntimeError(f"no {count} free adjacent ports in [{low}, {high})")
