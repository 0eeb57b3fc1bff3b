"""Peer ids and the peer table: who is around, who we know, whom we trust.

Theory of operation
-------------------
A peer *is* its 32-byte X25519 static public key. People see it as lowercase base32 without
padding (:func:`format_peer_id`, 52 characters; the first 16 are the short id), and may type it
as that or as 64 hex digits (:func:`parse_peer_key`).

:class:`PeerTable` sits over :class:`~daemon.database.PeerStore`. The store is the persistent
known-peers/trust list (every key we ever saw, its trust state, last handshake); the table adds
the in-memory *presence* view: which peers announced themselves within the last ``ttl`` seconds.
:meth:`PeerTable.expire` drops the silent ones (static peers, which never announce, never
expire).

Names come from untrusted mDNS TXT records, so the table pins them trust-on-first-use: the first
key seen with a name owns that name. A later announcement of the same name with another key is
refused with :class:`KeyChangedError` and recorded as a key-change event for the user to review;
the user accepts the new key by forgetting the old one (:meth:`PeerTable.forget`). The Noise
handshake against the announced key is what authenticates a peer; this pinning only stops a
neighbour from impersonating a familiar *name*.

Trust states: ``known`` (pinned on first use, may call us), ``trusted`` (receives our weights and
is aggregated), ``blocked`` (ignored). New peers start ``known``.

Bounds, for a node that runs for months next to peers it does not control: at most
:data:`MAX_KNOWN_PEERS` merely-known *nameless* peers are remembered (the least recently seen
go first; trusted, blocked, static and name-pinning peers always stay; the table is pruned once
per :data:`PRUNE_BATCH_DIVISOR`-th of the bound in new keys, so it may exceed it by that much
between prunes, and a flood of keys costs one sort per batch rather than per key), and a repeated
key-change offer refreshes its event instead of adding one (at most ``MAX_KEY_CHANGE_EVENTS``
are kept). A pin is never released by pruning, only by the user (:meth:`PeerTable.forget`,
:meth:`PeerTable.accept_key`): otherwise a flood of fresh keys would push "alice" out and let a
neighbour announce itself as "alice". So that pins cannot grow the database either, at most
:data:`MAX_PINNED_NAMES` names are pinned; past that a new name is not pinned (the peer is
recorded without it) until the user forgets some.

Trusting by *name* is what an attacker would aim at, so the command line shows the key's
:func:`fingerprint` and asks for it back (:func:`matches_fingerprint`); a full key needs no
such check, it is the identity itself.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from daemon.candidates import CandidateStore
from daemon.database import (
    PUBLIC_KEY_BYTES,
    DatabaseError,
    KeyChangeEvent,
    PeerRecord,
    PeerSource,
    PeerStore,
    TrustState,
    open_database,
)

__all__ = [
    "FINGERPRINT_LENGTH",
    "MAX_ADDRESSES_PER_PEER",
    "MAX_KNOWN_PEERS",
    "MAX_NAME_LENGTH",
    "MAX_PINNED_NAMES",
    "MIN_ID_PREFIX_LENGTH",
    "PRUNE_BATCH_DIVISOR",
    "SHORT_ID_LENGTH",
    "AmbiguousPeerError",
    "InvalidPeerKeyError",
    "InvalidPeerNameError",
    "KeyChangedError",
    "PeerError",
    "PeerTable",
    "UnknownPeerError",
    "fingerprint",
    "format_peer_id",
    "matches_fingerprint",
    "parse_peer_key",
    "prove_candidate",
    "sanitize_peer_name",
    "short_peer_id",
    "validate_peer_name",
]

SHORT_ID_LENGTH = 16
# A prefix this short could match by accident in a large table; ambiguity is reported anyway.
MIN_ID_PREFIX_LENGTH = 4
MAX_NAME_LENGTH = 63
MAX_ADDRESSES_PER_PEER = 4
#: Peers we merely know (not trusted, blocked or static) remembered at most; past this the
#: least recently seen are forgotten, so a neighbour cycling keys cannot grow the database.
MAX_KNOWN_PEERS = 10_000
#: Pruning sorts the merely-known peers: it runs once per ``max_known // PRUNE_BATCH_DIVISOR``
#: new keys (at least every key), an amortized 1/625th of a sort per key at the default bound.
PRUNE_BATCH_DIVISOR = 16
#: Names pinned at most (a pin is never pruned; see the module docstring).
MAX_PINNED_NAMES = 10_000
#: Characters of the peer id a fingerprint shows and a confirmation must repeat (80 bits).
FINGERPRINT_LENGTH = 16
# Names are shown in terminals and logs: printable ASCII letters, digits and a few separators,
# no leading/trailing space, so a TXT record cannot smuggle control characters or look-alikes.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-](?:[A-Za-z0-9 ._-]*[A-Za-z0-9._-])?")
#: Key-change events looked at to find the open ones.
MAX_PENDING_SCAN = 1000
_HEX_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
_BASE32_ID_LENGTH = 52  # ceil(32 * 8 / 5)


class PeerError(Exception):
    """Root of peer table errors; messages are one line."""


class InvalidPeerKeyError(PeerError, ValueError):
    """Text that is not a peer key (base32 or hex of 32 bytes)."""


class InvalidPeerNameError(PeerError, ValueError):
    """A display name outside the allowed length or character set."""


class UnknownPeerError(PeerError, LookupError):
    """No known peer matches the given key, name or id prefix."""


class AmbiguousPeerError(PeerError, LookupError):
    """More than one known peer matches the given name or id prefix."""


class OwnKeyError(PeerError, ValueError):
    """The key is this node's own: it is not a peer, so it cannot be added or trusted."""


class KeyChangedError(PeerError):
    """A known name was announced with a different key; refused and recorded."""

    def __init__(self, event: KeyChangeEvent) -> None:
        super().__init__(
            f"peer {event.name!r} announced key {short_peer_id(event.offered_key)} but is pinned "
            f"to {short_peer_id(event.pinned_key)}; refused (forget the old key to accept it)"
        )
        self.event = event


def format_peer_id(public_key: bytes) -> str:
    """The display form of a peer id: lowercase base32 of the key, no padding (52 chars)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidPeerKeyError(
            f"a peer key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)} bytes"
        )
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def short_peer_id(public_key: bytes) -> str:
    """The first :data:`SHORT_ID_LENGTH` characters of :func:`format_peer_id`."""
    return format_peer_id(public_key)[:SHORT_ID_LENGTH]


def fingerprint(public_key: bytes) -> str:
    """What a person compares before trusting a key: the first 16 id characters in fours."""
    head = format_peer_id(public_key)[:FINGERPRINT_LENGTH]
    return "-".join(head[start : start + 4] for start in range(0, FINGERPRINT_LENGTH, 4))


def matches_fingerprint(public_key: bytes, text: str) -> bool:
    """Whether ``text`` (any case, spaces and dashes ignored) is the key's fingerprint: at
    least :data:`FINGERPRINT_LENGTH` characters that start its peer id."""
    typed = "".join(char for char in text.lower() if char not in " -\t")
    return len(typed) >= FINGERPRINT_LENGTH and format_peer_id(public_key).startswith(typed)


def parse_peer_key(text: str) -> bytes:
    """Parse a peer key typed or configured as base32 (52 chars) or hex (64 chars)."""
    stripped = text.strip()
    if _HEX_PATTERN.fullmatch(stripped):
        return bytes.fromhex(stripped)
    if len(stripped) == _BASE32_ID_LENGTH:
        try:
            key = base64.b32decode(stripped.upper() + "====", casefold=False)
        except binascii.Error:
            pass
        else:
            # b32decode ignores non-zero trailing bits; re-encoding rejects such aliases so every
            # key has exactly one accepted base32 spelling.
            if len(key) == PUBLIC_KEY_BYTES and format_peer_id(key) == stripped.lower():
                return key
    shown = stripped if len(stripped) <= 70 else stripped[:67] + "..."
    raise InvalidPeerKeyError(
        f"not a peer key: {shown!r} (expected 52 base32 characters or 64 hex digits)"
    )


def validate_peer_name(name: str) -> str:
    """Return ``name`` if it is an acceptable display name, else raise a one-line error."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not _NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 70 else name[:67] + "..."
        raise InvalidPeerNameError(
            f"invalid peer name {shown!r}: 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 "
            "space . _ -, not starting or ending with a space"
        )
    return name


def sanitize_peer_name(text: str, *, fallback: str = "parley") -> str:
    """A valid display name made from arbitrary text (e.g. the host name, for the default).

    Characters outside the allowed set become ``-``; the result is cut to MAX_NAME_LENGTH.
    """
    replaced = "".join(
        char if char.isascii() and (char.isalnum() or char in " ._-") else "-" for char in text
    )
    candidate = replaced.strip()[:MAX_NAME_LENGTH].strip()
    return candidate if candidate and _NAME_PATTERN.fullmatch(candidate) else fallback


class PeerTable:
    """Presence (in memory, with TTL expiry) over the persistent trust list.

    ``clock`` returns wall-clock seconds (``time.time`` in the node): it stamps the stored
    first/last-seen times and drives expiry. ``pin_names=False`` (config
    ``trust.trust_on_first_use = false``) turns off the name pinning; keys stay the identity.
    Synchronous and not thread-safe: call it from the node's trio thread only.
    """

    def __init__(
        self,
        store: PeerStore,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
        pin_names: bool = True,
        max_known: int = MAX_KNOWN_PEERS,
        our_key: bytes | None = None,
        max_pinned_names: int = MAX_PINNED_NAMES,
        candidates: CandidateStore | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"peer ttl must be positive, got {ttl}")
        if max_known < 1:
            raise ValueError(f"max_known must be at least 1, got {max_known}")
        if max_pinned_names < 1:
            raise ValueError(f"max_pinned_names must be at least 1, got {max_pinned_names}")
        self._store = store
        self._max_known = max_known
        self._prune_every = max(1, max_known // PRUNE_BATCH_DIVISOR)
        # Due at the first new key: a restart must not let a table outgrow one batch per run.
        self._new_keys_since_prune = self._prune_every - 1
        self._max_pinned_names = max_pinned_names
        #: Names left unpinned because :data:`MAX_PINNED_NAMES` was reached (for the status).
        self.names_not_pinned = 0
        self._pin_names = pin_names
        self._ttl = ttl
        self._clock = clock
        self._our_key = our_key
        # key -> (last announcement time, source of that announcement)
        self._presence: dict[bytes, tuple[float, PeerSource]] = {}
        # Announced endpoints not yet proven by a handshake (bounded, expiring; kept in a file
        # when the store has one, so ``parley call`` and a restarted node can try them).
        self._candidates = (
            candidates if candidates is not None else CandidateStore(None, clock=clock)
        )

    def observe(
        self,
        public_key: bytes,
        *,
        name: str | None,
        address: tuple[str, int] | None,
        source: PeerSource,
    ) -> PeerRecord:
        """Record an announcement (mDNS, static config) and return the peer's record.

        Raises :class:`KeyChangedError` when ``name`` is pinned to another key. A blocked peer
        is still recorded; callers check ``record.trust``.
        """
        format_peer_id(public_key)  # validates the length
        self._refuse_our_key(public_key)
        if name is not None:
            validate_peer_name(name)
        now = self._clock()
        self._check_name_pinning(public_key, name, source=source, address=address, now=now)
        existing = self._store.get(public_key)
        if name is not None and self._would_pin_beyond_the_cap(existing, name):
            self.names_not_pinned += 1
            name = None
        if existing is None:
            record = _first_record(public_key, name, address, source, now, handshake=False)
            if self._store.insert_new(record):
                self._prune_after_new_key()
            else:  # another writer added it meanwhile: record what we learned
                self._store.update_presence(
                    public_key, name=name, addresses=record.addresses, source=source, last_seen=now
                )
        else:
            if source is PeerSource.MDNS and existing.addresses:
                # An announcement is not authenticated: it may not move a peer we already reach
                # (a static peer keeps its configured address and its source). A new endpoint
                # waits as a candidate until a handshake from it succeeds (record_handshake).
                if address is not None and address not in existing.addresses:
                    self._add_candidate(public_key, address)
                addresses = existing.addresses
            else:
                addresses = _merge_addresses(existing.addresses, address)
            record = replace(
                existing,
                name=existing.name if name is None else name,
                addresses=addresses,
                source=PeerSource.STATIC if existing.source is PeerSource.STATIC else source,
                last_seen=now,
            )
            # Column-level: the node never writes ``trust`` here (a CLI may change it now).
            self._store.update_presence(
                public_key, name=name, addresses=addresses, source=record.source, last_seen=now
            )
        self._presence[public_key] = (now, record.source)
        return record

    def _prune_after_new_key(self) -> None:
        self._new_keys_since_prune += 1
        if self._new_keys_since_prune >= self._prune_every:
            self._new_keys_since_prune = 0
            self._store.prune_known(self._max_known)

    def candidate_addresses(self, public_key: bytes) -> tuple[tuple[str, int], ...]:
        """Endpoints announced for a known key but not yet proven by a handshake from them."""
        return self._candidates.addresses(public_key)

    def save_candidates(self) -> bool:
        """Write the candidate endpoints if they changed (blocking: a worker thread)."""
        return self._candidates.save()

    def _add_candidate(self, public_key: bytes, address: tuple[str, int]) -> None:
        self._candidates.add(public_key, address)

    def record_handshake(
        self, public_key: bytes, *, address: tuple[str, int] | None, source: PeerSource
    ) -> PeerRecord:
        """A completed handshake with ``public_key`` (its key is now authenticated)."""
        format_peer_id(public_key)
        now = self._clock()
        existing = self._store.get(public_key)
        if existing is None:
            record = _first_record(public_key, None, address, source, now, handshake=True)
            if self._store.insert_new(record):
                self._prune_after_new_key()
                existing = None
            else:
                existing = record
        else:
            record = replace(
                existing,
                addresses=_merge_addresses(existing.addresses, address),
                last_seen=now,
                last_handshake=now,
            )
        if address is not None:
            self._candidates.remove(public_key, address)
        if existing is not None:
            self._store.update_presence(
                public_key,
                name=None,
                addresses=record.addresses,
                source=None,
                last_seen=now,
                last_handshake=now,
            )
        self._presence[public_key] = (now, self._presence.get(public_key, (now, source))[1])
        return record

    def expire(self) -> list[bytes]:
        """Forget the presence of peers silent for longer than ``ttl``; return their keys."""
        deadline = self._clock() - self._ttl
        gone = [
            key
            for key, (last_seen, source) in self._presence.items()
            if source is not PeerSource.STATIC and last_seen < deadline
        ]
        for key in gone:
            del self._presence[key]
        return gone

    def is_present(self, public_key: bytes) -> bool:
        return public_key in self._presence

    def present(self) -> list[PeerRecord]:
        """Peers announced within ``ttl`` (as of the last :meth:`expire`) plus static ones."""
        # A snapshot of the keys: the node may call this from a worker thread.
        records = (self._store.get(key) for key in list(self._presence))
        return [record for record in records if record is not None]

    def known(self) -> list[PeerRecord]:
        """Every peer in the trust list, oldest first."""
        return self._store.all()

    def get(self, public_key: bytes) -> PeerRecord | None:
        return self._store.get(public_key)

    def is_trusted(self, public_key: bytes) -> bool:
        record = self._store.get(public_key)
        return record is not None and record.trust is TrustState.TRUSTED

    def key_changes(self, *, limit: int = 100) -> list[KeyChangeEvent]:
        return self._store.key_changes(limit=limit)

    def pending_key_changes(self, *, limit: int = 100) -> list[KeyChangeEvent]:
        """Key-change offers still open: the name is still pinned to the key the event names
        (the newest offer per name and key first)."""
        pending: list[KeyChangeEvent] = []
        seen: set[tuple[str, bytes]] = set()
        for change in self._store.key_changes(limit=MAX_PENDING_SCAN):
            if (change.name, change.offered_key) in seen:
                continue
            seen.add((change.name, change.offered_key))
            holder = self._store.get(change.pinned_key)
            if holder is not None and holder.name == change.name:
                pending.append(change)
                if len(pending) >= limit:
                    break
        return pending

    def accept_key(self, name: str, offered_key: bytes | None = None) -> KeyChangeEvent:
        """Move the pin of ``name`` to the key it was last offered with (or ``offered_key``).

        The old key keeps its row, nameless and no longer trusted (a blocked one stays
        blocked); the new key is pinned to the name as ``known``: trusting it is a separate,
        explicit step. Raises :class:`UnknownPeerError` when no such offer is open.
        """
        offers = [
            change
            for change in self.pending_key_changes(limit=MAX_PENDING_SCAN)
            if change.name == name and (offered_key is None or change.offered_key == offered_key)
        ]
        if not offers:
            raise UnknownPeerError(f"no pending key change for {name!r}")
        change = offers[0]
        old = self._store.get(change.pinned_key)
        if old is not None:
            trust = TrustState.BLOCKED if old.trust is TrustState.BLOCKED else TrustState.KNOWN
            self._store.upsert(replace(old, name=None, trust=trust))
        now = self._clock()
        new = self._store.get(change.offered_key)
        address = _parse_address(change.address)
        if new is None:
            new = _first_record(
                change.offered_key, name, address, change.source, now, handshake=False
            )
        else:
            new = replace(new, name=name, addresses=_merge_addresses(new.addresses, address))
        self._store.upsert(new)
        self._store.delete_key_changes(name)
        return change

    def add_by_key(self, public_key: bytes, *, trust: TrustState) -> PeerRecord:
        """Record a key typed in full by the user with ``trust`` (allowed before it is seen)."""
        self._refuse_our_key(public_key)
        existing = self._store.get(public_key)
        if existing is None:
            record = _first_record(
                public_key, None, None, PeerSource.STATIC, self._clock(), handshake=False
            )
            record = replace(record, trust=trust)
            if self._store.insert_new(record):
                return record
            existing = record  # the node recorded it meanwhile: change its trust only
        # Column-level: a running node may be updating the same row's presence right now.
        self._store.set_trust(public_key, trust)
        return replace(existing, trust=trust)

    def resolve(self, key_or_name: str) -> PeerRecord:
        """Find one known peer by full key (base32/hex), exact name, or base32 id prefix."""
        text = key_or_name.strip()
        try:
            key = parse_peer_key(text)
        except InvalidPeerKeyError:
            pass
        else:
            record = self._store.get(key)
            if record is None:
                raise UnknownPeerError(f"no known peer with id {short_peer_id(key)}")
            return record
        by_name = self._store.find_by_name(text)
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            raise AmbiguousPeerError(
                f"name {text!r} matches {len(by_name)} peers "
                f"({_list_ids(by_name)}); use the peer id"
            )
        prefix = text.lower()
        if len(prefix) >= MIN_ID_PREFIX_LENGTH:
            matches = [
                record
                for record in self._store.all()
                if format_peer_id(record.public_key).startswith(prefix)
            ]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousPeerError(
                    f"id prefix {prefix!r} matches {len(matches)} peers ({_list_ids(matches)}); "
                    "type more characters"
                )
        shown = text if len(text) <= 70 else text[:67] + "..."
        raise UnknownPeerError(f"no known peer named {shown!r} or with that id")

    def trust(self, key_or_name: str) -> PeerRecord:
        return self._set_trust(key_or_name, TrustState.TRUSTED)

    def untrust(self, key_or_name: str) -> PeerRecord:
        """Back to ``known``: still pinned, no longer receives or contributes weights."""
        return self._set_trust(key_or_name, TrustState.KNOWN)

    def block(self, key_or_name: str) -> PeerRecord:
        return self._set_trust(key_or_name, TrustState.BLOCKED)

    def forget(self, key_or_name: str) -> PeerRecord:
        """Remove a peer from the trust list, releasing its name for a new key."""
        record = self.resolve(key_or_name)
        self._store.delete(record.public_key)
        self._presence.pop(record.public_key, None)
        return record

    def _refuse_our_key(self, public_key: bytes) -> None:
        if public_key == self._our_key:
            raise OwnKeyError(f"{short_peer_id(public_key)} is this node's own key, not a peer's")

    def _set_trust(self, key_or_name: str, state: TrustState) -> PeerRecord:
        record = self.resolve(key_or_name)
        self._refuse_our_key(record.public_key)
        record = replace(record, trust=state)
        if not self._store.set_trust(record.public_key, state):
            raise UnknownPeerError(f"no known peer with id {short_peer_id(record.public_key)}")
        return record

    def _would_pin_beyond_the_cap(self, existing: PeerRecord | None, name: str) -> bool:
        if not self._pin_names or (existing is not None and existing.name == name):
            return False
        return self._store.count_named() >= self._max_pinned_names

    def _check_name_pinning(
        self,
        public_key: bytes,
        name: str | None,
        *,
        source: PeerSource,
        address: tuple[str, int] | None,
        now: float,
    ) -> None:
        if name is None or not self._pin_names:
            return
        for holder in self._store.find_by_name(name):
            if holder.public_key != public_key:
                event = self._store.record_key_change(
                    name=name,
                    pinned_key=holder.public_key,
                    offered_key=public_key,
                    source=source,
                    address=None if address is None else _format_address(address),
                    seen_at=now,
                )
                raise KeyChangedError(event)


def seen_at(record: PeerRecord) -> float | None:
    """When the peer was last seen on the network, or ``None`` if it never was.

    A peer the user trusted by its key before it ever showed up has a record (the trust list
    keeps it) but no address and no handshake: it was never seen, whatever its stored time.
    Every sighting (mDNS, a static entry, an inbound handshake) brings an address.
    """
    if not record.addresses and record.last_handshake is None:
        return None
    return record.last_seen


def _first_record(
    public_key: bytes,
    name: str | None,
    address: tuple[str, int] | None,
    source: PeerSource,
    now: float,
    *,
    handshake: bool,
) -> PeerRecord:
    """The record of a key seen for the first time (trust on first use: ``known``)."""
    return PeerRecord(
        public_key=public_key,
        name=name,
        addresses=_merge_addresses((), address),
        source=source,
        first_seen=now,
        last_seen=now,
        last_handshake=now if handshake else None,
        trust=TrustState.KNOWN,
    )


def _merge_addresses(
    existing: tuple[tuple[str, int], ...], latest: tuple[str, int] | None
) -> tuple[tuple[str, int], ...]:
    """Most recent address first, without duplicates, at most MAX_ADDRESSES_PER_PEER."""
    if latest is None:
        return existing
    rest = tuple(address for address in existing if address != latest)
    return ((latest, *rest))[:MAX_ADDRESSES_PER_PEER]


def _parse_address(text: str | None) -> tuple[str, int] | None:
    """Inverse of :func:`_format_address` (None for anything else)."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return (host, int(port)) if host and port.isdigit() and int(port) < 65536 else None


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _list_ids(records: list[PeerRecord]) -> str:
    shown = ", ".join(short_peer_id(record.public_key) for record in records[:5])
    return shown + (", ..." if len(records) > 5 else "")


def prove_candidate(
    database_path: Path, candidates_path: Path, public_key: bytes, address: tuple[str, int]
) -> bool:
    """A handshake to the candidate ``address`` succeeded in a process other than the node
    (``parley call``): make it one of the peer's addresses and drop it from the candidates.
    Blocking (database and file writes). A hint not recorded is not worth failing a call
    over: a database or disk error returns False (the node proves it again next time)."""
    try:
        with open_database(database_path) as database:
            table = PeerTable(
                PeerStore(database), ttl=1.0, candidates=CandidateStore.open(candidates_path)
            )
            table.record_handshake(public_key, address=address, source=PeerSource.MDNS)
            return table.save_candidates()
    except (DatabaseError, OSError):
        return False
