"""Announced endpoints of known peers that no handshake has proven yet ("candidates").

An mDNS announcement is not authenticated, so it may not move a peer we already reach
(:meth:`daemon.peers.PeerTable.observe`): a new endpoint for a known key waits here until a
handshake to it succeeds, and then becomes one of the peer's addresses. Dialing tries the
peer's own addresses (the configured static one, those proven before) first, then these.

The book outlives the node process, so that ``parley call`` (another process) and a restarted
node can still try an endpoint announced while the node ran. It is bounded three ways: at
most :data:`MAX_CANDIDATES_PER_PEER` endpoints per peer (the most recently announced kept),
:data:`MAX_CANDIDATE_PEERS` peers (the least recently announced dropped first), and each
endpoint is forgotten :data:`CANDIDATE_TTL_S` after it was last announced.

:class:`CandidateBook` is the bounded structure itself (no I/O, clock passed in);
:class:`CandidateStore` adds the file: ``<home>/peer_candidates.json``, written atomically,
mode 0600, only when something changed, and by the caller's choice of thread (the node saves
from a worker thread). A file that cannot be read or makes no sense is set aside as
``.corrupt`` and the book starts empty: candidates are hints, never worth failing a start over.
Two processes writing the file (the node, a ``parley call`` that proved an endpoint) each
write their whole book; the later write wins, which at worst forgets a hint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from common.atomic import write_atomic
from daemon.logs import event, get_logger

__all__ = [
    "CANDIDATES_FILE_NAME",
    "CANDIDATE_TTL_S",
    "MAX_CANDIDATES_PER_PEER",
    "MAX_CANDIDATE_PEERS",
    "CandidateBook",
    "CandidateStore",
]

log = get_logger("candidates")

CANDIDATES_FILE_NAME: Final = "peer_candidates.json"
#: Peers with candidate endpoints remembered at most.
MAX_CANDIDATE_PEERS: Final = 1024
#: Candidate endpoints per peer (as many as a peer's proven addresses).
MAX_CANDIDATES_PER_PEER: Final = 4
#: An endpoint not announced again for this long is forgotten (a week: a laptop that was away).
CANDIDATE_TTL_S: Final = 7 * 24 * 3600.0
#: A file larger than any book the bounds allow is not read.
MAX_FILE_BYTES: Final = 1024 * 1024
_FORMAT: Final = 1

Address = tuple[str, int]


class CandidateBook:
    """Per peer key, endpoints with the time each was last announced (bounded, expiring)."""

    def __init__(
        self,
        *,
        ttl_s: float = CANDIDATE_TTL_S,
        max_peers: int = MAX_CANDIDATE_PEERS,
        max_per_peer: int = MAX_CANDIDATES_PER_PEER,
    ) -> None:
        if not (math.isfinite(ttl_s) and ttl_s > 0) or max_peers < 1 or max_per_peer < 1:
            raise ValueError("candidate bounds must be positive")
        self._ttl_s = ttl_s
        self._max_peers = max_peers
        self._max_per_peer = max_per_peer
        # key -> [(address, last announced)], most recent first; dict order = least recent peer
        # first, so the peer dropped when full is the one announced longest ago.
        self._entries: dict[bytes, list[tuple[Address, float]]] = {}
        #: Whether the book changed since it was last saved or loaded.
        self.changed = False

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, public_key: bytes, address: Address, now: float) -> None:
        kept = [item for item in self._entries.pop(public_key, []) if item[0] != address]
        self._entries[public_key] = [(address, now), *kept][: self._max_per_peer]
        while len(self._entries) > self._max_peers:
            del self._entries[next(iter(self._entries))]
        self.changed = True

    def remove(self, public_key: bytes, address: Address) -> None:
        """``address`` is no longer a candidate (a handshake proved it: it is an address now)."""
        entries = self._entries.get(public_key)
        if entries is None or all(item[0] != address for item in entries):
            return
        remaining = [item for item in entries if item[0] != address]
        if remaining:
            self._entries[public_key] = remaining
        else:
            del self._entries[public_key]
        self.changed = True

    def addresses(self, public_key: bytes, now: float) -> tuple[Address, ...]:
        """The peer's unexpired candidates, most recently announced first."""
        return tuple(
            address
            for address, seen in self._entries.get(public_key, ())
            if now - seen <= self._ttl_s
        )

    def expire(self, now: float) -> int:
        """Forget endpoints not announced for longer than the TTL; return how many went."""
        gone = 0
        for key in list(self._entries):
            entries = self._entries[key]
            fresh = [item for item in entries if now - item[1] <= self._ttl_s]
            gone += len(entries) - len(fresh)
            if not fresh:
                del self._entries[key]
            elif len(fresh) != len(entries):
                self._entries[key] = fresh
        if gone:
            self.changed = True
        return gone

    def to_json(self) -> bytes:
        peers = [
            {"key": key.hex(), "endpoints": [[host, port, seen] for (host, port), seen in entries]}
            for key, entries in self._entries.items()
        ]
        return json.dumps({"format": _FORMAT, "peers": peers}).encode()

    def load_json(self, data: bytes, now: float) -> None:
        """Replace the contents with a saved book (expired entries dropped, bounds applied).

        Raises ValueError when ``data`` is not a book this code wrote.
        """
        document = json.loads(data)
        if not isinstance(document, Mapping) or document.get("format") != _FORMAT:
            raise ValueError("not a candidate book (unknown format)")
        peers = document.get("peers")
        if not isinstance(peers, list):
            raise ValueError("candidate book without a peer list")
        self._entries.clear()
        for peer in peers:
            key, endpoints = _parse_peer(peer)
            # Oldest first, so add() leaves the most recent first and the bounds keep the newest.
            for address, seen in sorted(endpoints, key=lambda item: item[1]):
                if now - seen <= self._ttl_s:
                    self.add(key, address, seen)
        self.changed = False


def _parse_peer(peer: object) -> tuple[bytes, list[tuple[Address, float]]]:
    if not isinstance(peer, Mapping):
        raise ValueError("candidate book entry is not an object")
    key_text, endpoints = peer.get("key"), peer.get("endpoints")
    if not isinstance(key_text, str) or len(key_text) != 64 or not isinstance(endpoints, list):
        raise ValueError("candidate book entry without a 32-byte key and endpoints")
    key = bytes.fromhex(key_text)
    parsed: list[tuple[Address, float]] = []
    for endpoint in endpoints:
        if not (isinstance(endpoint, list) and len(endpoint) == 3):
            raise ValueError("candidate endpoint is not [host, port, seen]")
        host, port, seen = endpoint
        if (
            not isinstance(host, str)
            or not 0 < len(host) <= 255
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 1 <= port <= 65535
            or isinstance(seen, bool)
            or not isinstance(seen, int | float)
            or not math.isfinite(seen)
        ):
            raise ValueError("candidate endpoint has a bad host, port or time")
        parsed.append(((host, port), float(seen)))
    return key, parsed


class CandidateStore:
    """A :class:`CandidateBook` kept in a file (None: in memory only). Not thread-safe: the
    node changes it on its trio thread and saves it from a worker thread while the trio thread
    waits; a ``parley call`` process uses its own."""

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        book: CandidateBook | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self.book = book if book is not None else CandidateBook()

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> CandidateStore:
        """The book saved at ``path`` (empty when there is none or it is unreadable)."""
        store = cls(path, clock=clock)
        try:
            with path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return store
        except OSError as error:
            event(log, logging.WARNING, "candidates.unreadable", path=str(path), reason=str(error))
            return store
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"over {MAX_FILE_BYTES} bytes")
            store.book.load_json(data, clock())
        except (ValueError, UnicodeDecodeError) as error:
            store.book = CandidateBook()
            store._set_aside(f"{error}")
        return store

    def _set_aside(self, reason: str) -> None:
        assert self.path is not None
        corrupt = self.path.with_name(self.path.name + ".corrupt")
        try:
            self.path.replace(corrupt)
        except OSError:
            corrupt = self.path
        event(log, logging.WARNING, "candidates.corrupt", path=str(corrupt), reason=reason)

    def add(self, public_key: bytes, address: Address) -> None:
        self.book.add(public_key, address, self._clock())

    def remove(self, public_key: bytes, address: Address) -> None:
        self.book.remove(public_key, address)

    def addresses(self, public_key: bytes) -> tuple[Address, ...]:
        return self.book.addresses(public_key, self._clock())

    def save(self) -> bool:
        """Write the book if it changed (blocking: call it from a worker thread in the node).
        A failure (disk full, read-only home) is logged, the book stays marked changed for the
        next try, and False is returned: never an error for the caller."""
        self.book.expire(self._clock())
        if self.path is None or not self.book.changed:
            return False
        data = self.book.to_json()
        self.book.changed = False
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError as error:
            self.book.changed = True
            event(
                log, logging.WARNING, "candidates.not_saved", path=str(self.path), reason=str(error)
            )
            return False
        return True
