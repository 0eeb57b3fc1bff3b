"""Per-address token buckets for handshakes (WireGuard rate-limits initiations the same way).

Sans-IO: the clock is passed in, so tests drive time by hand. Memory is bounded: at most
``max_addresses`` buckets are kept, the least recently used dropped first; a dropped bucket
comes back full, which only ever errs towards letting an honest peer in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_ADDRESSES = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float],
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_addresses < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_addresses >= 1 are required")
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._max_addresses = max_addresses
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str) -> bool:
        """Take one token for ``address``; False (and counted) when its bucket is empty."""
        now = self._clock()
        bucket = self._buckets.pop(address, None)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
        self._buckets[address] = bucket
        while len(self._buckets) > self._max_addresses:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False
