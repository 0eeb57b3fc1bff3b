"""The connection manager: accepts and dials TCP connections and runs handshakes on them.

Theory of operation
-------------------
Inbound: every accepted connection first passes the per-address rate limit (refused ones are
closed at once and counted), then waits for a handshake slot (at most
``max_concurrent_handshakes`` run at a time; the handshake deadline covers the wait for the
peer, so a half-open handshake cannot hold a slot for ever). The responder's trust decision is
the :class:`~daemon.trust_policy.TrustPolicy`'s. A completed handshake is recorded in the peer
table; a trusted initiator's bundle (message 3) is handed to ``on_bundle`` for the next round
and kept as its decoder. The session then stays open for what follows (calls), served by
``on_session``; the default answers pings and waits for ``Bye``.

Outbound: :meth:`ConnectionManager.exchange_bundles` dials a peer, runs the handshake with our
bundle in message 3 when we trust it, takes the responder's bundle from the first transport
message, and closes with ``Bye``. Failed peers are retried with capped exponential backoff and
jitter; a dial before the backoff elapsed is refused without touching the network.

Nothing here decides *when* to talk to whom: the round scheduler does.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from daemon.backoff import Backoff
from daemon.database import PeerRecord, PeerSource
from daemon.logs import event, get_logger
from daemon.peers import PeerTable, short_peer_id
from daemon.ratelimit import RateLimiter
from daemon.trust_policy import TrustPolicy
from handshake.handshake import TrustDecision
from handshake.noise import StaticIdentity
from handshake.replay import ReplayCache
from handshake.stream import SessionStream, StreamSettings, accept_session, initiate_session
from schemas.messages import Bye, Hello, Ping, Pong, WeightsBundle

log = get_logger("connections")

#: An inbound session with no traffic for this long is closed.
SESSION_IDLE_TIMEOUT_S: Final = 120.0
#: Dialing one address gives up after this long.
CONNECT_TIMEOUT_S: Final = 5.0


class DialError(Exception):
    """A peer could not be reached or the handshake with it failed; ``str()`` says why."""


class CountingStream(trio.abc.Stream):
    """Counts the bytes a stream moves, for the status and the round report."""

    def __init__(self, inner: trio.abc.Stream, counters: ConnectionStats) -> None:
        self._inner = inner
        self._counters = counters

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._counters.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._inner.receive_some(max_bytes)
        self._counters.bytes_received += len(data)
        return bytes(data)

    async def aclose(self) -> None:
        await self._inner.aclose()


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
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def record_handshake_time(self, seconds: float) -> None:
        self.handshake_seconds.append(seconds)
        del self.handshake_seconds[:-256]  # bounded: the latest are what matter

    def as_dict(self) -> dict[str, object]:
        times = sorted(self.handshake_seconds)
        return {
            "handshakes_completed": self.handshakes_completed,
            "handshakes_failed": self.handshakes_failed,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "bundles_sent": self.bundles_sent,
            "bundles_received": self.bundles_received,
            "rejected": dict(self.rejected),
            "handshake_p50_s": times[len(times) // 2] if times else None,
        }


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: int
    peer: bytes
    direction: str
    address: str
    started_at: float
    trust: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.session_id,
            "peer": short_peer_id(self.peer),
            "direction": self.direction,
            "address": self.address,
            "started_at": self.started_at,
            "trust": self.trust,
        }


SessionHandler = Callable[[SessionStream, SessionInfo], Awaitable[None]]
BundleHandler = Callable[[bytes, WeightsBundle], None]


def _failure_reason(error: BaseException) -> str:
    """The innermost cause of a broken handshake, as one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _reason_code(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, trio.TooSlowError):
        return "handshake_timeout"
    return type(error).__name__


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
        on_bundle: BundleHandler,
        on_session: SessionHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._hello = hello
        self._our_bundle = our_bundle
        self._peers = peers
        self._policy = policy
        self._settings = settings
        self._handshake_slots = trio.CapacityLimiter(max_concurrent_handshakes)
        self._rate_limiter = RateLimiter(
            rate_per_s=handshakes_per_address_per_s,
            burst=max(1.0, 2 * handshakes_per_address_per_s),
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
        self.stats = ConnectionStats()

    # -- inbound -----------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (0 picks a port) and handle connections until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_port: int = listeners[0].socket.getsockname()[1]
        task_status.started(bound_port)
        await trio.serve_listeners(self.handle_inbound, listeners)

    async def handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            address = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        host = str(address[0])
        if not self._rate_limiter.allow(host):
            self.stats.reject("rate_limited")
            await trio.aclose_forcefully(stream)
            return
        counted = CountingStream(stream, self.stats)
        async with self._handshake_slots:
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
                self.stats.reject(_reason_code(error))
                event(
                    log,
                    logging.INFO,
                    "handshake.refused",
                    address=host,
                    direction="inbound",
                    reason=_failure_reason(error),
                )
                return
        self.stats.record_handshake_time(self._clock() - started)
        await self._run_session(session, direction="inbound", address=(host, None))

    async def _run_session(
        self, session: SessionStream, *, direction: str, address: tuple[str, int | None]
    ) -> None:
        async with session:
            peer = session.their_static_public
            self.stats.handshakes_completed += 1
            self._peers.record_handshake(peer, address=None, source=PeerSource.INBOUND)
            decision = session.trust_decision
            if decision is TrustDecision.TRUSTED:
                self.stats.bundles_sent += 1
            bundle = session.their_bundle
            if bundle is not None:
                self.stats.bundles_received += 1
                if self._policy.aggregate_from(peer):
                    self._on_bundle(peer, bundle)
                else:
                    self.stats.reject("bundle_from_untrusted_peer")
            info = SessionInfo(
                session_id=next(self._session_ids),
                peer=peer,
                direction=direction,
                address=address[0],
                started_at=time.time(),
                trust=decision.name.lower() if decision is not None else "initiated",
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
            except trio.ClosedResourceError:
                pass  # we closed it (shutdown)
            except trio.BrokenResourceError as error:
                self.stats.reject(_reason_code(error))
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
        """Say ``Bye`` on every open session (node shutdown); bounded by the close timeout."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for session in list(self._open_streams.values()):
                    nursery.start_soon(session.aclose)

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
        if not peer.addresses:
            raise DialError("no known address")
        send_weights = self._policy.send_weights_to(key)
        failures: list[str] = []
        for host, port in peer.addresses:
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


async def serve_idle_session(session: SessionStream, info: SessionInfo) -> None:
    """The default life of an inbound session: answer pings until ``Bye`` or idleness."""
    while True:
        with trio.move_on_after(SESSION_IDLE_TIMEOUT_S) as idle:
            message = await session.receive_message()
        if idle.cancelled_caught:
            return
        if isinstance(message, Bye):
            return
        if isinstance(message, Ping):
            await session.send_message(Pong(message.nonce))
