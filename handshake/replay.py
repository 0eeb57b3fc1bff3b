"""Drop exact replays of handshake message 1 early (sans-IO, injected clock).

In XK, message 1 (``e, es``) is not authenticated against replay: an attacker who recorded one
can send it again and the responder will decrypt it fine and answer with message 2. The replay
cannot complete (message 3 needs the initiator's ephemeral and static private keys), so it is
harmless to security, but each replay costs the responder two DH operations and a pending
handshake. Keying on the initiator's ephemeral public key (the first 32 bytes, fresh per honest
handshake) lets the node refuse an exact replay before any DH.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from schemas.errors import LocalProtocolError, RemoteProtocolError

EPHEMERAL_KEY_LEN: Final = 32
#: Distinct message-1 ephemerals remembered; the oldest is forgotten first.
REPLAY_CACHE_CAPACITY: Final = 4096
#: How long an ephemeral is remembered: longer than any handshake may take to complete.
REPLAY_CACHE_TTL_SECONDS: Final = 300.0


class ReplayedMessageError(RemoteProtocolError):
    """Message 1 repeats an ephemeral key seen recently: an exact replay, dropped before any DH."""


class ReplayCache:
    """A bounded, time-limited set of message-1 ephemeral keys already seen."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        capacity: int = REPLAY_CACHE_CAPACITY,
        ttl_seconds: float = REPLAY_CACHE_TTL_SECONDS,
    ) -> None:
        if capacity < 1:
            raise LocalProtocolError("replay cache capacity must be positive")
        if not (math.isfinite(ttl_seconds) and ttl_seconds > 0):
            raise LocalProtocolError("replay cache TTL must be a positive number")
        self._clock = clock
        self._capacity = capacity
        self._ttl = ttl_seconds
        # ephemeral key -> time first seen; insertion order is age order.
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, first_seen = next(iter(seen.items()))
            if now - first_seen < self._ttl:
                break
            del seen[key]

    def check_fresh(self, message1: bytes) -> None:
        """Raise :class:`RemoteProtocolError` if this message 1's ephemeral was seen recently."""
        self._expire(self._clock())
        if bytes(message1[:EPHEMERAL_KEY_LEN]) in self._seen:
            raise ReplayedMessageError("handshake message 1 is a replay (ephemeral key seen)")

    def remember(self, message1: bytes) -> None:
        """Record this message 1's ephemeral key (call once it decrypted)."""
        now = self._clock()
        self._expire(now)
        key = bytes(message1[:EPHEMERAL_KEY_LEN])
        if len(key) != EPHEMERAL_KEY_LEN:
            return
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
