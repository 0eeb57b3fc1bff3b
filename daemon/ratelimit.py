"""Token buckets for handshakes, per address and per network prefix (WireGuard rate-limits
initiations the same way).

Sans-IO: the clock is passed in, so tests drive time by hand.

Theory of operation
-------------------
One address is cheap to change: a host on a LAN can take any free address of its /24, and an
IPv6 host owns a whole /64 (2**64 addresses). So :class:`HandshakeLimiter` checks two buckets:
the address's own, then, only if that one allows, its prefix's (:func:`address_prefix`: /24
for IPv4, /64 for IPv6). A flood from one address therefore spends its own bucket and leaves
its neighbours' shared prefix budget alone; a flood spread over many addresses of one prefix
is held to the prefix's rate as a whole, before any of its addresses gets a bucket.

Memory is bounded: a :class:`RateLimiter` keeps at most ``max_keys`` buckets. When it is full,
a new key may only replace the least recently used bucket if that bucket has refilled
completely (forgetting a full bucket loses nothing: a new key starts full). Otherwise the new
key is refused: the table *fails closed*. Evicting a half-spent bucket instead would hand a
flood of fresh addresses a fresh burst each (12,291 of 12,291 attempts got through that way).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_ADDRESSES: Final = 4096
#: Prefix lengths that name "one network" for the prefix budget.
IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 64
#: How many times one address's rate a whole prefix gets.
PREFIX_RATE_FACTOR: Final = 4.0


def address_prefix(host: str) -> str:
    """The network ``host`` belongs to for rate limits: its /24 (IPv4, also IPv4-mapped IPv6)
    or its /64 (IPv6). Text that is not an address is its own key."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    length = IPV4_PREFIX if isinstance(address, ipaddress.IPv4Address) else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key (an address or a prefix), bounded and failing closed when full."""

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
        #: Of ``refused``: new keys turned away because the table was full of live buckets.
        self.refused_table_full = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str) -> bool:
        """Take one token for ``address``; False (and counted) when its bucket is empty, or
        when it has no bucket and none can be made without forgetting a spent one."""
        now = self._clock()
        bucket = self._buckets.pop(address, None)
        if bucket is None:
            if len(self._buckets) >= self._max_addresses and not self._evict_one_refilled(now):
                self.refused += 1
                self.refused_table_full += 1
                return False
            bucket = _Bucket(self._burst, now)
        else:
            self._refill(bucket, now)
        self._buckets[address] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False

    def would_allow(self, address: str) -> bool:
        """Whether :meth:`allow` would take a token now (a key without a bucket would start
        full); changes nothing."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return True
        elapsed = max(0.0, self._clock() - bucket.updated)
        return min(self._burst, bucket.tokens + elapsed * self._rate) >= 1.0

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = now

    def _evict_one_refilled(self, now: float) -> bool:
        """Drop the least recently used bucket if it is full again (no information lost)."""
        oldest_key = next(iter(self._buckets))
        oldest = self._buckets[oldest_key]
        self._refill(oldest, now)
        if oldest.tokens < self._burst:
            return False
        del self._buckets[oldest_key]
        return True


class HandshakeLimiter:
    """The address's bucket, then its prefix's (see the module docstring)."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        clock: Callable[[], float],
        prefix_rate_per_s: float | None = None,
        max_keys: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        prefix_rate = prefix_rate_per_s or rate_per_s * PREFIX_RATE_FACTOR
        self.addresses = RateLimiter(
            rate_per_s=rate_per_s,
            burst=max(1.0, 2 * rate_per_s),
            clock=clock,
            max_addresses=max_keys,
        )
        self.prefixes = RateLimiter(
            rate_per_s=prefix_rate,
            burst=max(1.0, 2 * prefix_rate),
            clock=clock,
            max_addresses=max_keys,
        )

    def allow(self, host: str) -> bool:
        """One handshake from ``host``: its own bucket must have a token (looked at first, so a
        single flooding address does not spend its neighbours' budget), then its prefix's is
        charged, then its own. An address gets a bucket only once its prefix let it in, so a
        spread-out flood cannot fill the address table."""
        if not self.addresses.would_allow(host):
            self.addresses.refused += 1
            return False
        if not self.prefixes.allow(address_prefix(host)):
            return False
        return self.addresses.allow(host)

    @property
    def refused(self) -> int:
        return self.addresses.refused + self.prefixes.refused
