"""The trio shell around the sans-IO handshake and session: any ``trio.abc.Stream`` in, a
:class:`SessionStream` of typed messages out.

Theory of operation
-------------------
``initiate_session`` / ``accept_session`` run the four handshake messages over the stream, each
framed by its 2-byte length, under one deadline (``handshake_timeout_s``). Any failure there (a
peer error, a rejection, the deadline, a broken stream) closes the stream and raises
``trio.BrokenResourceError`` with the real cause in ``__cause__``. ``open_*`` are the same as
async context managers that close the session on exit.

A :class:`SessionStream` moves bytes only; the protocol lives in
:class:`~handshake.session.Session`.
All I/O goes through :meth:`SessionStream._pump`, which maps every failure of the peer or the
transport to ``trio.BrokenResourceError`` (cause kept), as trio's ``SSLStream._retry`` does.
Misuse on our side (a message over a limit) raises :class:`LocalProtocolError` before any I/O.

Writes are coalesced: messages queued by several tasks while a ``send_all`` is in flight go out
together in the next one, and :meth:`SessionStream.send_messages` sends a batch in one write.
The session's clock is trio's (``trio.current_time``), so tests can use the autojump clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import trio

from handshake.framing import NEED_DATA, FrameReader, frame
from handshake.handshake import (
    HandshakeResult,
    InitiatorHandshake,
    ResponderHandshake,
    TrustCheck,
    TrustDecision,
)
from handshake.noise import StaticIdentity
from handshake.replay import ReplayCache
from handshake.session import Session, SessionSettings, SessionState
from schemas.errors import ProtocolError, RemoteProtocolError
from schemas.messages import ByeReason, Hello, Message, WeightsBundle

#: The whole handshake (four messages) must finish within this, or the stream is closed.
HANDSHAKE_TIMEOUT_SECONDS: Final = 10.0
#: Bytes asked of the stream per read: one maximal frame.
RECEIVE_SIZE: Final = 65536
#: How long aclose() waits to deliver our Bye before closing regardless.
CLOSE_TIMEOUT_SECONDS: Final = 2.0
#: How long one write may wait for the peer to read: a peer that stops reading would otherwise
#: hold the task that writes to it (and its buffers) for as long as it likes.
SEND_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamSettings:
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_SECONDS
    close_timeout_s: float = CLOSE_TIMEOUT_SECONDS
    send_timeout_s: float = SEND_TIMEOUT_SECONDS
    receive_size: int = RECEIVE_SIZE
    session: SessionSettings = field(default_factory=SessionSettings)

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_s", "close_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number")
        if not 1 <= self.receive_size <= 4 * RECEIVE_SIZE:
            raise ValueError("receive_size is out of range")


class InitiatorRejectedByUs(ProtocolError):
    """Responder side: our trust check rejected the initiator; we sent Bye and closed."""


class PeerClosedError(RemoteProtocolError):
    """The peer closed the connection without ``Bye`` (mid-handshake or mid-session): a peer
    that went away, not by itself an attack; the node counts it as ``peer_closed``."""


class SendTimeoutError(RemoteProtocolError):
    """The peer did not read what we sent within ``send_timeout_s``; the session is broken."""


class SessionStream(trio.abc.AsyncResource):
    """Typed messages over an established session."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        result: HandshakeResult,
        settings: StreamSettings,
        already_received: bytes = b"",
    ) -> None:
        self._stream = stream
        self._result = result
        self._session: Session = result.session
        self._settings = settings
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._outgoing = bytearray()
        self._broken: BaseException | None = None
        self._closed = False
        if already_received:
            # Bytes that followed the handshake's last frame in the same read.
            self._session.receive_data(already_received)

    # What the handshake established.
    @property
    def their_static_public(self) -> bytes:
        return self._result.their_static_public

    @property
    def their_hello(self) -> Hello:
        return self._result.their_hello

    @property
    def their_bundle(self) -> WeightsBundle | None:
        return self._result.their_bundle

    @property
    def handshake_hash(self) -> bytes:
        return self._result.handshake_hash

    @property
    def trust_decision(self) -> TrustDecision | None:
        return self._result.trust_decision

    @property
    def session(self) -> Session:
        return self._session

    async def send_message(self, message: Message) -> None:
        await self.send_messages((message,))

    async def send_messages(self, messages: Iterable[Message]) -> None:
        """Send several messages in one write (each still its own encrypted frame)."""
        self._check_usable()
        for message in messages:
            self._outgoing += self._session.send(message)
        async with self._send_lock:
            self._check_usable()
            if not self._outgoing:
                return  # a task ahead of us wrote our bytes with its own
            data = bytes(self._outgoing)
            self._outgoing.clear()
            await self._pump(data, want_event=False)

    async def receive_message(self) -> Message:
        """The next message; a ``Bye`` is returned once, then ``trio.EndOfChannel``."""
        async with self._receive_lock:
            if self._session.state is SessionState.CLOSED:
                raise trio.EndOfChannel("the session is closed")
            self._check_usable()
            event = await self._pump(None, want_event=True)
            assert event is not None
            return event

    async def aclose(self, reason: ByeReason = ByeReason.NORMAL) -> None:
        """Send ``Bye(reason)`` (bounded by ``close_timeout_s``) and close the stream."""
        if self._closed:
            return
        self._closed = True
        self._session.discard_partial()
        try:
            if self._broken is None and self._session.state is SessionState.OPEN:
                with trio.move_on_after(self._settings.close_timeout_s):
                    data = self._session.close(reason)
                    async with self._send_lock:
                        await self._stream.send_all(bytes(self._outgoing) + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone already; closing is all that is left to do
        finally:
            await self._stream.aclose()

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this session stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this session stream is broken") from self._broken

    async def _pump(self, outgoing: bytes | None, *, want_event: bool) -> Message | None:
        """All I/O: write ``outgoing``, then read until the session yields an event if asked.

        The one place that turns peer and transport failures into trio.BrokenResourceError.
        """
        try:
            if outgoing:
                limit = self._settings.send_timeout_s
                try:
                    with trio.fail_after(limit):
                        try:
                            await self._stream.send_all(outgoing)
                        except trio.Cancelled:
                            # A send_all cut short leaves a partial frame on the wire: nothing
                            # after it can be understood by the peer.
                            self._broken = RemoteProtocolError("a write was cancelled midway")
                            raise
                except trio.TooSlowError:
                    raise SendTimeoutError(
                        f"peer did not read {len(outgoing)} bytes within {limit} s"
                    ) from None
            if not want_event:
                return None
            session = self._session
            while True:
                event = session.next_event()
                if event is not NEED_DATA:
                    assert not isinstance(event, type(NEED_DATA))
                    return event
                data = await self._stream.receive_some(self._settings.receive_size)
                if not data:
                    raise PeerClosedError("peer closed the connection without Bye")
                session.receive_data(bytes(data))
        except (ProtocolError, trio.BrokenResourceError, OSError) as exc:
            self._broken = exc
            self._session.discard_partial()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)
            raise trio.BrokenResourceError(f"session failed: {exc}") from exc


async def _receive_frame(stream: trio.abc.Stream, reader: FrameReader, receive_size: int) -> bytes:
    while True:
        item = reader.next_frame()
        if isinstance(item, bytes):
            return item
        data = await stream.receive_some(receive_size)
        if not data:
            raise PeerClosedError("peer closed the connection during the handshake")
        reader.receive_data(bytes(data))


async def _fail_handshake(stream: trio.abc.Stream, exc: BaseException) -> None:
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)
    raise trio.BrokenResourceError(f"handshake failed: {exc}") from exc


async def initiate_session(
    stream: trio.abc.Stream,
    *,
    identity: StaticIdentity,
    responder_static_public: bytes,
    our_hello: Hello,
    our_bundle: WeightsBundle | None,
    settings: StreamSettings | None = None,
) -> SessionStream:
    """Run the initiator's side of the handshake on ``stream``; return the session."""
    settings = settings if settings is not None else StreamSettings()
    reader = FrameReader()
    try:
        with trio.fail_after(settings.handshake_timeout_s):
            handshake = InitiatorHandshake(
                identity=identity,
                responder_static_public=responder_static_public,
                our_hello=our_hello,
                our_bundle=our_bundle,
                clock=trio.current_time,
                settings=settings.session,
            )
            await stream.send_all(frame(handshake.create_msg1()))
            handshake.consume_msg2(await _receive_frame(stream, reader, settings.receive_size))
            await stream.send_all(frame(handshake.create_msg3()))
            handshake.consume_first_transport(
                await _receive_frame(stream, reader, settings.receive_size)
            )
            result = handshake.split()
            return SessionStream(stream, result, settings, reader.take_remaining())
    except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
        await _fail_handshake(stream, exc)
        raise AssertionError("unreachable") from None


async def accept_session(
    stream: trio.abc.Stream,
    *,
    identity: StaticIdentity,
    our_hello: Hello,
    our_bundle: WeightsBundle | None,
    trust_check: TrustCheck,
    replay_cache: ReplayCache | None = None,
    settings: StreamSettings | None = None,
) -> SessionStream:
    """Run the responder's side of the handshake on ``stream``; return the session.

    A REJECT from ``trust_check`` sends ``Bye(NOT_TRUSTED)``, closes the stream, and raises
    BrokenResourceError caused by :class:`InitiatorRejectedByUs`.
    """
    settings = settings if settings is not None else StreamSettings()
    reader = FrameReader()
    try:
        with trio.fail_after(settings.handshake_timeout_s):
            handshake = ResponderHandshake(
                identity=identity,
                our_hello=our_hello,
                our_bundle=our_bundle,
                trust_check=trust_check,
                clock=trio.current_time,
                settings=settings.session,
                replay_cache=replay_cache,
            )
            handshake.consume_msg1(await _receive_frame(stream, reader, settings.receive_size))
            await stream.send_all(frame(handshake.create_msg2()))
            handshake.consume_msg3(await _receive_frame(stream, reader, settings.receive_size))
            await stream.send_all(frame(handshake.create_first_transport()))
            if handshake.trust_decision is TrustDecision.REJECT:
                raise InitiatorRejectedByUs("initiator's static key rejected; sent Bye")
            result = handshake.split()
            return SessionStream(stream, result, settings, reader.take_remaining())
    except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
        await _fail_handshake(stream, exc)
        raise AssertionError("unreachable") from None


@asynccontextmanager
async def open_initiator_session(
    stream: trio.abc.Stream,
    *,
    identity: StaticIdentity,
    responder_static_public: bytes,
    our_hello: Hello,
    our_bundle: WeightsBundle | None,
    settings: StreamSettings | None = None,
) -> AsyncIterator[SessionStream]:
    session_stream = await initiate_session(
        stream,
        identity=identity,
        responder_static_public=responder_static_public,
        our_hello=our_hello,
        our_bundle=our_bundle,
        settings=settings,
    )
    async with session_stream:
        yield session_stream


@asynccontextmanager
async def open_responder_session(
    stream: trio.abc.Stream,
    *,
    identity: StaticIdentity,
    our_hello: Hello,
    our_bundle: WeightsBundle | None,
    trust_check: TrustCheck,
    replay_cache: ReplayCache | None = None,
    settings: StreamSettings | None = None,
) -> AsyncIterator[SessionStream]:
    session_stream = await accept_session(
        stream,
        identity=identity,
        our_hello=our_hello,
        our_bundle=our_bundle,
        trust_check=trust_check,
        replay_cache=replay_cache,
        settings=settings,
    )
    async with session_stream:
        yield session_stream


__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "InitiatorRejectedByUs",
    "PeerClosedError",
    "SendTimeoutError",
    "SessionStream",
    "StreamSettings",
    "accept_session",
    "initiate_session",
    "open_initiator_session",
    "open_responder_session",
]
