"""The connection manager: accepts and dials TCP connections and runs handshakes on them.

Theory of operation
-------------------
Inbound: every accepted connection first passes the rate limit, per address and per /24 or
/64 prefix (:class:`~daemon.ratelimit.HandshakeLimiter`; refused ones are closed at once and
counted, before they can take anything else, so no Diffie-Hellman is spent on them), and the
cap on half-open connections (accepted, handshake not finished) from its prefix; then it waits
for a handshake slot (at most ``max_concurrent_handshakes`` run at a time). The wait for a slot
is itself bounded, in time (the handshake deadline) and in how many may queue
(:data:`MAX_WAITING_PER_SLOT` per slot): a flood from many addresses is refused as ``busy``
rather than piling up sockets. The handshake deadline covers the wait for the peer, so a
half-open handshake cannot hold a slot for ever. Message 1 carries only a ``Hello``: a length
prefix over :data:`MAX_MESSAGE1_BYTES` is refused as soon as its two bytes arrive, before its
body is read. The responder's trust decision is the :class:`~daemon.trust_policy.TrustPolicy`'s.
A completed handshake is recorded in the peer table; a trusted initiator's bundle (message 3)
is handed to ``on_bundle`` for the next round and kept as its decoder (``on_bundle`` may answer
a rejection reason, which is counted). The session then stays open for what follows (calls),
served by ``on_session``; the default answers pings and waits for ``Bye``.

Descriptors and memory are budgeted too: :func:`connection_limits` derives the caps on
sessions and half-open connections from ``RLIMIT_NOFILE``, keeping headroom for the node's
own files (database, models, calls, the status socket), so a crowd of strangers cannot make
``parley status`` fail; chunk reassembly in every session draws on one shared
:class:`~handshake.session.MemoryBudget`.

Every refusal is counted in :class:`ConnectionStats` under a reason code from a fixed set
(:class:`Rejection`, chosen by the *type* of the failure in :data:`REJECTION_BY_CAUSE`; plus
``invalid_bundle:<code>`` with the typed :class:`~codec.errors.BundleProblem` of the refused
bundle, and the call handler's ``call_<code>``), never under text a peer could choose: a
hostile peer cannot grow the status report.

Outbound: :meth:`ConnectionManager.exchange_bundles` dials a peer, runs the handshake with our
bundle in message 3 when we trust it, takes the responder's bundle from the first transport
message, and closes with ``Bye``. Failed peers are retried with capped exponential backoff and
jitter; a dial before the backoff elapsed is refused without touching the network.

Nothing here decides *when* to talk to whom: the round scheduler does.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from codec.errors import InvalidBundleError
from daemon.backoff import Backoff
from daemon.database import PeerRecord, PeerSource
from daemon.faults import FaultLog
from daemon.logs import event, get_logger
from daemon.peers import PeerTable, short_peer_id
from daemon.ratelimit import HandshakeLimiter, address_prefix
from daemon.trust import SessionTrust
from daemon.trust_policy import TrustPolicy
from daemon.views import ConnectionStatsView, LimitsView, SessionView, to_wire
from handshake.framing import FRAME_HEADER_LEN
from handshake.handshake import HandshakeRejected, TrustDecision
from handshake.noise import AuthenticationError, StaticIdentity
from handshake.replay import ReplayCache, ReplayedMessageError
from handshake.stream import (
    InitiatorRejectedByUs,
    PeerClosedError,
    SendTimeoutError,
    SessionStream,
    StreamSettings,
    accept_session,
    initiate_session,
)
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import Bye, ByeReason, Hello, Ping, Pong, WeightsBundle

log = get_logger("connections")

#: An inbound session with no traffic for this long is closed (pings do not count).
SESSION_IDLE_TIMEOUT_S: Final = 120.0
#: The longest an inbound session without a call lives (WireGuard's REJECT_AFTER_TIME); the
#: peer dials again for what comes next, with a fresh key exchange.
SESSION_MAX_AGE_S: Final = 180.0
#: Dialing one address gives up after this long.
CONNECT_TIMEOUT_S: Final = 5.0
#: Largest message 1 we read. It holds an ephemeral key, a Hello and a tag: a node sends a
#: few hundred bytes; the schema's own limits on a Hello stay well under this.
MAX_MESSAGE1_BYTES: Final = 8192
#: Connections that may wait for a handshake slot, per slot; beyond that they are refused.
MAX_WAITING_PER_SLOT: Final = 4
#: Established inbound sessions held open at once (each holds a socket until Bye or idleness),
#: in all and from one address; a handshake beyond either is closed with Bye and counted.
MAX_INBOUND_SESSIONS: Final = 1024
MAX_INBOUND_SESSIONS_PER_ADDRESS: Final = 64
#: Descriptors kept for the node's own use, at least, and as a share of the limit.
FD_HEADROOM_MIN: Final = 64
FD_HEADROOM_FRACTION: Final = 0.125
#: Half-open connections from one /24 or /64, as a share of all half-open ones (at least 8).
HALF_OPEN_PREFIX_SHARE: Final = 0.25
MIN_HALF_OPEN_PER_PREFIX: Final = 8


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps on what inbound peers may hold (see :func:`connection_limits`)."""

    max_sessions: int
    max_half_open: int
    max_half_open_per_prefix: int


def connection_limits(nofile: int, *, max_concurrent_handshakes: int) -> ConnectionLimits:
    """Caps that fit in ``nofile`` descriptors (``RLIMIT_NOFILE``'s soft limit).

    ``max(64, nofile / 8)`` stay free for the node itself; of the rest a third at most goes to
    half-open connections (handshake slots and those waiting for one) and the remainder to
    established sessions, never more than :data:`MAX_INBOUND_SESSIONS`. At ``ulimit -n 200``:
    45 half-open and 91 sessions; at 1,024: 160 and 736.
    """
    budget = max(4, nofile - max(FD_HEADROOM_MIN, int(nofile * FD_HEADROOM_FRACTION)))
    half_open = max(2, min(max_concurrent_handshakes * (1 + MAX_WAITING_PER_SLOT), budget // 3))
    sessions = max(1, min(MAX_INBOUND_SESSIONS, budget - half_open))
    per_prefix = max(MIN_HALF_OPEN_PER_PREFIX, int(half_open * HALF_OPEN_PREFIX_SHARE))
    return ConnectionLimits(
        max_sessions=sessions,
        max_half_open=half_open,
        max_half_open_per_prefix=min(per_prefix, half_open),
    )


class Rejection(enum.StrEnum):
    """Every reason this module refuses a connection or session for (``invalid_bundle:*``
    aside): the keys of ``rejected`` in the status, a fixed set a peer cannot grow."""

    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    OVERSIZED_FRAME = "oversized_frame"
    REPLAYED_MSG1 = "replayed_msg1"
    AUTH_FAILED = "auth_failed"
    TAMPERED = "tampered"
    NOT_TRUSTED = "not_trusted"
    PEER_CLOSED = "peer_closed"
    PROTOCOL_ERROR = "protocol_error"
    CONNECTION_ERROR = "connection_error"
    BUNDLE_FROM_UNTRUSTED_PEER = "bundle_from_untrusted_peer"
    TOO_MANY_SESSIONS = "too_many_sessions"
    HALF_OPEN_LIMIT = "half_open_limit"
    EVICTED_FOR_TRUSTED = "evicted_for_trusted"
    SEND_TIMEOUT = "send_timeout"
    INTERNAL_ERROR = "internal_error"


REJECTION_REASONS: Final = frozenset(Rejection)


class DialError(Exception):
    """A peer could not be reached or the handshake with it failed; ``str()`` says why."""


class OversizedFrameError(RemoteProtocolError):
    """A frame's length prefix is over what that message may hold."""


class CountingStream(trio.abc.Stream):
    """Counts the bytes a stream moves, for the status and the round report.

    With ``max_first_frame``, the first frame's 2-byte length prefix is checked as soon as it
    arrives (inbound message 1), so an oversized one is refused before its body is read.
    """

    def __init__(
        self,
        inner: trio.abc.Stream,
        counters: ConnectionStats,
        *,
        max_first_frame: int | None = None,
    ) -> None:
        self._inner = inner
        self._counters = counters
        self._max_first_frame = max_first_frame
        self._first_header = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._counters.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._inner.receive_some(max_bytes)
        self._counters.bytes_received += len(data)
        if self._max_first_frame is not None and data:
            self._check_first_header(bytes(data))
        return bytes(data)

    def _check_first_header(self, data: bytes) -> None:
        assert self._max_first_frame is not None
        header = self._first_header + data[: FRAME_HEADER_LEN - len(self._first_header)]
        if len(header) < FRAME_HEADER_LEN:
            self._first_header = header
            return
        self._first_header = b""
        limit, self._max_first_frame = self._max_first_frame, None
        size = int.from_bytes(header, "big")
        if size > limit:
            raise OversizedFrameError(f"message 1 announces {size} bytes, over {limit}")

    async def aclose(self) -> None:
        await self._inner.aclose()


#: The plain counters of :class:`ConnectionStats`, shown as they are.
_COUNTERS: Final = (
    "handshakes_completed",
    "handshakes_failed",
    "bytes_sent",
    "bytes_received",
    "bundles_sent",
    "bundles_received",
)


@dataclass(slots=True)
class ConnectionStats:
    """Counters shown by ``parley status``; rejections are counted by reason."""

    handshakes_completed: int = 0
    handshakes_failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bundles_sent: int = 0
    bundles_received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    handshake_seconds: list[float] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        """Count one refusal: a :class:`Rejection`, ``invalid_bundle:*`` or ``call_*``."""
        key = str(reason)  # the plain word, also for a Rejection member
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def record_handshake_time(self, seconds: float) -> None:
        self.handshake_seconds.append(seconds)
        del self.handshake_seconds[:-256]  # bounded: the latest are what matter

    def view(self) -> ConnectionStatsView:
        times = sorted(self.handshake_seconds)
        return ConnectionStatsView(
            **{name: getattr(self, name) for name in _COUNTERS},
            rejected=dict(self.rejected),
            handshake_p50_s=times[len(times) // 2] if times else None,
        )

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = to_wire(self.view())
        return shown


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: int
    peer: bytes
    direction: str
    address: str
    started_at: float
    trust: SessionTrust
    #: How long the session may idle and live without a call (config ``session.idle_timeout_s``
    #: and ``session.max_age_s``); handlers build their :class:`SessionLifetime` from these.
    idle_s: float = SESSION_IDLE_TIMEOUT_S
    max_age_s: float = SESSION_MAX_AGE_S
    #: What the peer said it speaks in its Hello (``fl/1``, ``call/1``): shown, not enforced,
    #: so a peer of a later version with more capabilities is still served (docs/design.md).
    capabilities: tuple[str, ...] = ()

    def lifetime(self) -> SessionLifetime:
        return SessionLifetime(
            clock=trio.current_time, idle_s=self.idle_s, max_age_s=self.max_age_s
        )

    def view(self) -> SessionView:
        return SessionView(
            id=self.session_id,
            peer=short_peer_id(self.peer),
            direction=self.direction,
            address=self.address,
            started_at=self.started_at,
            trust=str(self.trust),
            capabilities=self.capabilities,
        )


SessionHandler = Callable[[SessionStream, SessionInfo], Awaitable[None]]
#: Takes a trusted peer's bundle; returns why it was refused, or None when it was kept.
BundleHandler = Callable[[bytes, WeightsBundle], InvalidBundleError | None]


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _failure_reason(error: BaseException) -> str:
    """The innermost cause of a broken handshake, as one line (for the log only)."""
    error = _innermost(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


#: What a broken handshake or session is counted as, by the type of its innermost cause (as
#: httpx maps its transport's exceptions): the first entry the cause is an instance of wins,
#: so the more specific types come first. A cause matching none is a ``protocol_error``.
REJECTION_BY_CAUSE: Final[tuple[tuple[type[BaseException], Rejection], ...]] = (
    (trio.TooSlowError, Rejection.HANDSHAKE_TIMEOUT),
    (OversizedFrameError, Rejection.OVERSIZED_FRAME),
    (ReplayedMessageError, Rejection.REPLAYED_MSG1),
    (SendTimeoutError, Rejection.SEND_TIMEOUT),
    (AuthenticationError, Rejection.AUTH_FAILED),
    (InitiatorRejectedByUs, Rejection.NOT_TRUSTED),
    (HandshakeRejected, Rejection.NOT_TRUSTED),
    # A peer that hangs up mid-handshake or without Bye is not an attack by itself.
    (PeerClosedError, Rejection.PEER_CLOSED),
    (RemoteProtocolError, Rejection.PROTOCOL_ERROR),
    (trio.BrokenResourceError, Rejection.CONNECTION_ERROR),
    (trio.ClosedResourceError, Rejection.CONNECTION_ERROR),
    (OSError, Rejection.CONNECTION_ERROR),
    (LocalProtocolError, Rejection.INTERNAL_ERROR),
)


def _count_down(counts: dict[str, int], key: str) -> None:
    """One fewer for ``key``; a key at zero is dropped, so the map holds live keys only."""
    remaining = counts[key] - 1
    if remaining:
        counts[key] = remaining
    else:
        del counts[key]


def session_trust(decision: TrustDecision | None) -> SessionTrust:
    """An open session's trust from the responder's verdict (None: we dialed)."""
    if decision is None:
        return SessionTrust.INITIATED
    if decision is TrustDecision.TRUSTED:
        return SessionTrust.TRUSTED
    if decision is TrustDecision.KNOWN:
        return SessionTrust.KNOWN
    raise LocalProtocolError("a rejected initiator has no session")


def reason_code(error: BaseException, *, in_handshake: bool) -> Rejection:
    """The rejection reason for a broken handshake/session (:data:`REJECTION_BY_CAUSE`).

    Authentication failures are ``auth_failed`` during the handshake (garbage, a wrong key)
    and ``tampered`` after it (the session's keys are established, so a bad tag means the
    bytes were changed on the way).
    """
    cause = _innermost(error)
    for kind, reason in REJECTION_BY_CAUSE:
        if isinstance(cause, kind):
            if reason is Rejection.AUTH_FAILED and not in_handshake:
                return Rejection.TAMPERED
            return reason
    return Rejection.PROTOCOL_ERROR


def bundle_rejection_code(error: InvalidBundleError) -> str:
    """``invalid_bundle:<code>`` for a refused bundle, from its typed problem (a fixed set)."""
    return f"invalid_bundle:{error.problem.value}"


class ConnectionManager:
    def __init__(
        self,
        *,
        identity: StaticIdentity,
        hello: Callable[[], Hello],
        our_bundle: Callable[[], WeightsBundle],
        peers: PeerTable,
        policy: TrustPolicy,
        settings: StreamSettings,
        max_concurrent_handshakes: int,
        handshakes_per_address_per_s: float,
        on_bundle: BundleHandler | None = None,
        on_session: SessionHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_inbound_sessions: int = MAX_INBOUND_SESSIONS,
        max_inbound_sessions_per_address: int = MAX_INBOUND_SESSIONS_PER_ADDRESS,
        max_half_open: int | None = None,
        max_half_open_per_prefix: int | None = None,
        handshakes_per_prefix_per_s: float | None = None,
        session_idle_s: float = SESSION_IDLE_TIMEOUT_S,
        session_max_age_s: float = SESSION_MAX_AGE_S,
        faults: FaultLog | None = None,
        stats: ConnectionStats | None = None,
    ) -> None:
        """``on_bundle`` and ``on_session`` may be given here or by :meth:`wire` (the node
        builds this manager before the round scheduler that takes its bundles)."""
        self._faults = faults if faults is not None else FaultLog()
        self._session_idle_s = session_idle_s
        self._session_max_age_s = session_max_age_s
        self._identity = identity
        self._hello = hello
        self._our_bundle = our_bundle
        self._peers = peers
        self._policy = policy
        self._settings = settings
        self._handshake_slots = trio.CapacityLimiter(max_concurrent_handshakes)
        self._max_waiting = MAX_WAITING_PER_SLOT * max_concurrent_handshakes
        self._waiting = 0
        self._max_half_open = (
            max_half_open
            if max_half_open is not None
            else max_concurrent_handshakes * (1 + MAX_WAITING_PER_SLOT)
        )
        self._max_half_open_per_prefix = (
            max_half_open_per_prefix
            if max_half_open_per_prefix is not None
            else max(MIN_HALF_OPEN_PER_PREFIX, int(self._max_half_open * HALF_OPEN_PREFIX_SHARE))
        )
        self._half_open_total = 0
        self._half_open: dict[str, int] = {}
        self._max_inbound_sessions = max_inbound_sessions
        self._max_inbound_sessions_per_address = max_inbound_sessions_per_address
        self._inbound_sessions: dict[str, int] = {}
        self._inbound_total = 0
        self._rate_limiter = HandshakeLimiter(
            rate_per_s=handshakes_per_address_per_s,
            prefix_rate_per_s=handshakes_per_prefix_per_s,
            clock=clock,
        )
        self._replay_cache = ReplayCache(clock=trio.current_time)
        self._on_bundle = on_bundle
        self._on_session = on_session if on_session is not None else serve_idle_session
        self._clock = clock
        self._backoff: dict[bytes, Backoff] = {}
        self._next_dial: dict[bytes, float] = {}
        self._session_ids = itertools.count(1)
        self.sessions: dict[int, SessionInfo] = {}
        self._open_streams: dict[int, SessionStream] = {}
        self.stats = stats if stats is not None else ConnectionStats()

    def wire(self, *, on_bundle: BundleHandler, on_session: SessionHandler | None) -> None:
        """Connect what this manager hands on: trusted peers' bundles, and every session once
        open (None: :func:`serve_idle_session`). Before :meth:`serve` is started."""
        self._on_bundle = on_bundle
        self._on_session = on_session if on_session is not None else serve_idle_session

    # -- inbound -----------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (0 picks a port) and handle connections until cancelled."""
        if self._on_bundle is None:
            raise LocalProtocolError("wire() the connection manager before serving")
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_port: int = listeners[0].socket.getsockname()[1]
        task_status.started(bound_port)
        await trio.serve_listeners(self._handle_inbound_isolated, listeners)

    async def _handle_inbound_isolated(self, stream: trio.SocketStream) -> None:
        """One connection is one unit: an unexpected error (a locked database, a bug in a
        session handler) closes it and is counted, never ends the node (daemon.faults)."""
        try:
            await self.handle_inbound(stream)
        except Exception as error:
            self.stats.reject(Rejection.INTERNAL_ERROR)
            self._faults.record("connection", error)
            await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.SocketStream, reason: Rejection) -> None:
        """Count a refused connection and drop it at once (no Bye: it gets nothing from us)."""
        self.stats.reject(reason)
        await trio.aclose_forcefully(stream)

    async def handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        host = str(address[0])
        if not self._rate_limiter.allow(host):
            await self._refuse(stream, Rejection.RATE_LIMITED)
            return
        address_full = self._inbound_sessions.get(host, 0) >= self._max_inbound_sessions_per_address
        if address_full or (self._session_limit_reached(host) and not self._evictable_session()):
            # Checked before the handshake too: a full house should not cost us DH operations
            # (while strangers hold sessions, a trusted peer may still displace one).
            await self._refuse(stream, Rejection.TOO_MANY_SESSIONS)
            return
        prefix = address_prefix(host)
        if self._half_open_total >= self._max_half_open:
            await self._refuse(stream, Rejection.BUSY)
            return
        if self._half_open.get(prefix, 0) >= self._max_half_open_per_prefix:
            # One network's silent sockets cannot take the others' places in the queue.
            await self._refuse(stream, Rejection.HALF_OPEN_LIMIT)
            return
        self._half_open_total += 1
        self._half_open[prefix] = self._half_open.get(prefix, 0) + 1
        try:
            session = await self._handshake_inbound(stream, host)
        finally:
            self._half_open_total -= 1
            _count_down(self._half_open, prefix)
        if session is None:
            return
        await self._serve_inbound(session, host)

    async def _handshake_inbound(
        self, stream: trio.SocketStream, host: str
    ) -> SessionStream | None:
        """Wait for a slot and run the responder's handshake; None if refused (counted)."""
        if self._waiting >= self._max_waiting:
            await self._refuse(stream, Rejection.BUSY)
            return None
        counted = CountingStream(stream, self.stats, max_first_frame=MAX_MESSAGE1_BYTES)
        # The wait for a slot is bounded too, so queued connections cannot pile up.
        self._waiting += 1
        try:
            with trio.move_on_after(self._settings.handshake_timeout_s) as waiting:
                await self._handshake_slots.acquire()
        finally:
            self._waiting -= 1
        if waiting.cancelled_caught:
            await self._refuse(stream, Rejection.BUSY)
            return None
        try:
            started = self._clock()
            try:
                session = await accept_session(
                    counted,
                    identity=self._identity,
                    our_hello=self._hello(),
                    our_bundle=self._our_bundle(),
                    trust_check=self._policy.decide_initiator,
                    replay_cache=self._replay_cache,
                    settings=self._settings,
                )
            except trio.BrokenResourceError as error:
                self.stats.handshakes_failed += 1
                self.stats.reject(reason_code(error, in_handshake=True))
                event(
                    log,
                    logging.INFO,
                    "handshake.refused",
                    address=host,
                    direction="inbound",
                    reason=_failure_reason(error),
                )
                return None
        finally:
            self._handshake_slots.release()
        self.stats.record_handshake_time(self._clock() - started)
        return session

    async def _serve_inbound(self, session: SessionStream, host: str) -> None:
        if self._session_limit_reached(host):
            # A trusted peer displaces the oldest session of a peer we do not trust: strangers
            # filling every place must not lock out the people the node is for.
            victim = self._evictable_session()
            trusted = session.trust_decision is TrustDecision.TRUSTED
            per_address_full = (
                self._inbound_sessions.get(host, 0) >= self._max_inbound_sessions_per_address
            )
            if not trusted or victim is None or per_address_full:
                self.stats.reject(Rejection.TOO_MANY_SESSIONS)
                await session.aclose()
                return
            self.stats.reject(Rejection.EVICTED_FOR_TRUSTED)
            event(log, logging.INFO, "session.evicted", peer=short_peer_id(victim[1].peer))
            await victim[0].aclose()
        self._inbound_sessions[host] = self._inbound_sessions.get(host, 0) + 1
        self._inbound_total += 1
        try:
            await self._run_session(session, direction="inbound", address=(host, None))
        finally:
            self._inbound_total -= 1
            _count_down(self._inbound_sessions, host)

    def limits(self) -> LimitsView:
        """The caps in force and how full they are (for ``parley status``)."""
        budget = self._settings.session.reassembly_budget
        return LimitsView(
            max_sessions=self._max_inbound_sessions,
            inbound_sessions=self._inbound_total,
            max_half_open=self._max_half_open,
            max_half_open_per_prefix=self._max_half_open_per_prefix,
            half_open=self._half_open_total,
            reassembly_budget_bytes=None if budget is None else budget.total_bytes,
            reassembly_in_use_bytes=None if budget is None else budget.in_use,
        )

    def _evictable_session(self) -> tuple[SessionStream, SessionInfo] | None:
        """The oldest inbound session of a peer we do not trust, if any."""
        candidates = [
            info
            for info in self.sessions.values()
            if info.direction == "inbound" and info.trust is not SessionTrust.TRUSTED
        ]
        if not candidates:
            return None
        oldest = min(candidates, key=lambda info: info.started_at)
        stream = self._open_streams.get(oldest.session_id)
        return None if stream is None else (stream, oldest)

    def _session_limit_reached(self, host: str) -> bool:
        return (
            self._inbound_total >= self._max_inbound_sessions
            or self._inbound_sessions.get(host, 0) >= self._max_inbound_sessions_per_address
        )

    async def _run_session(
        self, session: SessionStream, *, direction: str, address: tuple[str, int | None]
    ) -> None:
        async with session:
            peer = session.their_static_public
            self.stats.handshakes_completed += 1
            await trio.to_thread.run_sync(
                lambda: self._peers.record_handshake(peer, address=None, source=PeerSource.INBOUND)
            )
            decision = session.trust_decision
            if decision is TrustDecision.TRUSTED:
                self.stats.bundles_sent += 1
            bundle = session.their_bundle
            if bundle is not None:
                self.stats.bundles_received += 1
                if self._policy.aggregate_from(peer) and self._on_bundle is not None:
                    refused = self._on_bundle(peer, bundle)
                    if refused is not None:
                        self.stats.reject(bundle_rejection_code(refused))
                else:
                    self.stats.reject(Rejection.BUNDLE_FROM_UNTRUSTED_PEER)
            info = SessionInfo(
                session_id=next(self._session_ids),
                peer=peer,
                direction=direction,
                address=address[0],
                started_at=time.time(),
                trust=session_trust(decision),
                idle_s=self._session_idle_s,
                max_age_s=self._session_max_age_s,
                capabilities=session.their_hello.capabilities,
            )
            event(
                log,
                logging.INFO,
                "session.open",
                peer=short_peer_id(peer),
                direction=direction,
                trust=info.trust,
            )
            self.sessions[info.session_id] = info
            self._open_streams[info.session_id] = session
            try:
                await self._on_session(session, info)
            except (trio.ClosedResourceError, trio.EndOfChannel):
                # We closed it (shutdown): a handler that was not yet waiting for a message
                # finds the session closed (EndOfChannel) while our Bye is still being sent;
                # a normal end, neither a fault nor a reason to drop the socket under the Bye.
                pass
            except trio.BrokenResourceError as error:
                self.stats.reject(reason_code(error, in_handshake=False))
                event(
                    log,
                    logging.INFO,
                    "session.broken",
                    peer=short_peer_id(peer),
                    reason=_failure_reason(error),
                )
            finally:
                del self.sessions[info.session_id]
                self._open_streams.pop(info.session_id, None)
                event(log, logging.INFO, "session.closed", peer=short_peer_id(peer))

    async def close_all_sessions(self) -> None:
        """Say ``Bye(SHUTDOWN)`` on every open session (node shutdown): the peer can tell a
        node going away from a session that is done; bounded by the close timeout."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for session in list(self._open_streams.values()):
                    nursery.start_soon(session.aclose, ByeReason.SHUTDOWN)

    # -- outbound ----------------------------------------------------------------------------

    def ready_to_dial(self, public_key: bytes) -> bool:
        return self._next_dial.get(public_key, -math.inf) <= self._clock()

    async def exchange_bundles(self, peer: PeerRecord) -> WeightsBundle | None:
        """Handshake with ``peer``; return the bundle it sent (None if it sent none).

        Raises :class:`DialError` if no address works, or the peer is still backing off.
        """
        key = peer.public_key
        if not self.ready_to_dial(key):
            raise DialError("backing off after an earlier failure")
        # Proven addresses first; announced ones only become addresses once a handshake to
        # them succeeds (the handshake authenticates the key, the announcement does not).
        addresses = [*peer.addresses]
        addresses += [
            item for item in self._peers.candidate_addresses(key) if item not in addresses
        ]
        if not addresses:
            raise DialError("no known address")
        send_weights = self._policy.send_weights_to(key)
        failures: list[str] = []
        for host, port in addresses:
            started = self._clock()
            try:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    tcp = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as error:
                failures.append(f"{host}:{port}: {error or 'timed out'}")
                continue
            try:
                session = await initiate_session(
                    CountingStream(tcp, self.stats),
                    identity=self._identity,
                    responder_static_public=key,
                    our_hello=self._hello(),
                    our_bundle=self._our_bundle() if send_weights else None,
                    settings=self._settings,
                )
            except trio.BrokenResourceError as error:
                self.stats.handshakes_failed += 1
                failures.append(f"{host}:{port}: {_failure_reason(error)}")
                continue
            self.stats.record_handshake_time(self._clock() - started)
            if send_weights:
                self.stats.bundles_sent += 1
            bundle = session.their_bundle
            async with session:
                self.stats.handshakes_completed += 1
                self._peers.record_handshake(key, address=(host, port), source=peer.source)
                if bundle is not None:
                    self.stats.bundles_received += 1
            self._backoff.pop(key, None)
            self._next_dial.pop(key, None)
            return bundle
        backoff = self._backoff.setdefault(key, Backoff())
        self._next_dial[key] = self._clock() + backoff.next_delay()
        raise DialError("; ".join(failures))


class SessionLifetime:
    """When a session with nothing to do ends: ``idle_s`` after its last real message (a
    ``Ping`` is answered but is not activity, or a peer could keep a session for ever with
    one ping a minute), and ``max_age_s`` after it opened in any case. Sans-IO: the clock
    (trio's, in the node) is passed in."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        idle_s: float = SESSION_IDLE_TIMEOUT_S,
        max_age_s: float = SESSION_MAX_AGE_S,
    ) -> None:
        if not (idle_s > 0 and max_age_s > 0):
            raise ValueError("idle_s and max_age_s must be positive")
        self._clock = clock
        self._idle_s = idle_s
        self._opened = clock()
        self._max_age_s = max_age_s
        self._last_activity = self._opened

    def activity(self) -> None:
        """A message that is not a ping arrived."""
        self._last_activity = self._clock()

    @property
    def deadline(self) -> float:
        return min(self._last_activity + self._idle_s, self._opened + self._max_age_s)

    @property
    def over(self) -> bool:
        return self._clock() >= self.deadline


async def serve_idle_session(session: SessionStream, info: SessionInfo) -> None:
    """The default life of an inbound session: answer pings until ``Bye``, idleness or age
    (see :class:`SessionLifetime`)."""
    lifetime = info.lifetime()
    while not lifetime.over:
        with trio.move_on_at(lifetime.deadline):
            message = await session.receive_message()
        if lifetime.over or isinstance(message, Bye):
            return
        if isinstance(message, Ping):
            await session.send_message(Pong(message.nonce))
        else:
            lifetime.activity()
