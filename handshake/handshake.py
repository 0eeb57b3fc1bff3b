"""The XK handshake as two explicit state machines (sans-IO: Noise messages in and out).

Theory of operation
-------------------
Payload placement follows docs/design.md ("Wire") and the Noise spec's payload security table:

====================  ===========  ==========================================================
message               direction    payload
====================  ===========  ==========================================================
1 (``e, es``)         I -> R       initiator's ``Hello``: replayable, so never weights
2 (``e, ee``)         R -> I       responder's ``Hello`` (codec version hash): I not yet
                                   authenticated, so never weights
3 (``s, se``)         I -> R       initiator's ``WeightsBundle``, or ``NoBundle`` when the
                                   initiator does not trust the responder
first transport       R -> I       after the responder's trust check on the initiator's key:
                                   ``WeightsBundle`` (TRUSTED), ``NoBundle`` (KNOWN), or
                                   ``Bye(NOT_TRUSTED)`` and close (REJECT)
====================  ===========  ==========================================================

Each side is a state machine with a transition table keyed by (state, verb). An illegal verb, any
failure inside a verb (a tampered or truncated message, a wrong key, a bad payload), moves the
object to ``ERROR``, and every later call raises :class:`LocalProtocolError`. An initiator told
``Bye`` in the first transport message moves to ``CLOSED`` and raises
:class:`HandshakeRejected`; a responder that rejected moves to ``CLOSED`` after writing it.

Both bundles must fit one Noise message (the 50 KB codec target does, with room to spare);
larger weights go through the session, chunked.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from handshake.noise import (
    MAX_HANDSHAKE_PAYLOAD,
    MAX_NOISE_MESSAGE,
    PROLOGUE,
    NoiseXK,
    StaticIdentity,
    TransportCipher,
)
from handshake.replay import ReplayCache
from handshake.session import Session, SessionSettings
from schemas.codec import NoBundle, decode, encode
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import PROTOCOL_VERSION, Bye, ByeReason, Hello, WeightsBundle

_T = TypeVar("_T")


class TrustDecision(enum.IntEnum):
    """The responder's verdict on the initiator's static key, taken after message 3."""

    #: Continue; our bundle goes in the first transport message.
    TRUSTED = 0
    #: Continue the session (e.g. a call from a known peer) but send no weights.
    KNOWN = 1
    #: Send ``Bye(NOT_TRUSTED)`` as the first transport message, no weights, and close.
    REJECT = 2


TrustCheck = Callable[[bytes], TrustDecision]


class HandshakeRejected(RemoteProtocolError):
    """The responder ended the handshake with ``Bye``; ``reason`` says why."""

    def __init__(self, reason: ByeReason) -> None:
        super().__init__(f"responder closed the handshake: {reason.name}")
        self.reason = reason


class HandshakeState(enum.Enum):
    START = enum.auto()
    # initiator
    AWAIT_MSG2 = enum.auto()
    READY_MSG3 = enum.auto()
    AWAIT_FIRST_TRANSPORT = enum.auto()
    # responder
    READY_MSG2 = enum.auto()
    AWAIT_MSG3 = enum.auto()
    READY_FIRST_TRANSPORT = enum.auto()
    # both
    COMPLETE = enum.auto()
    SPLIT = enum.auto()
    CLOSED = enum.auto()
    ERROR = enum.auto()


class _Verb(enum.Enum):
    CREATE_MSG1 = "create message 1"
    CONSUME_MSG1 = "consume message 1"
    CREATE_MSG2 = "create message 2"
    CONSUME_MSG2 = "consume message 2"
    CREATE_MSG3 = "create message 3"
    CONSUME_MSG3 = "consume message 3"
    CREATE_FIRST_TRANSPORT = "create the first transport message"
    CREATE_REJECTION = "create the rejection"
    CONSUME_FIRST_TRANSPORT = "consume the first transport message"
    SPLIT = "split into a session"


_S = HandshakeState
_INITIATOR_TRANSITIONS: Final = {
    (_S.START, _Verb.CREATE_MSG1): _S.AWAIT_MSG2,
    (_S.AWAIT_MSG2, _Verb.CONSUME_MSG2): _S.READY_MSG3,
    (_S.READY_MSG3, _Verb.CREATE_MSG3): _S.AWAIT_FIRST_TRANSPORT,
    (_S.AWAIT_FIRST_TRANSPORT, _Verb.CONSUME_FIRST_TRANSPORT): _S.COMPLETE,
    (_S.COMPLETE, _Verb.SPLIT): _S.SPLIT,
}
_RESPONDER_TRANSITIONS: Final = {
    (_S.START, _Verb.CONSUME_MSG1): _S.READY_MSG2,
    (_S.READY_MSG2, _Verb.CREATE_MSG2): _S.AWAIT_MSG3,
    (_S.AWAIT_MSG3, _Verb.CONSUME_MSG3): _S.READY_FIRST_TRANSPORT,
    (_S.READY_FIRST_TRANSPORT, _Verb.CREATE_FIRST_TRANSPORT): _S.COMPLETE,
    (_S.READY_FIRST_TRANSPORT, _Verb.CREATE_REJECTION): _S.CLOSED,
    (_S.COMPLETE, _Verb.SPLIT): _S.SPLIT,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class HandshakeResult:
    """What a completed handshake established, and the session to continue on."""

    their_static_public: bytes
    their_hello: Hello
    their_bundle: WeightsBundle | None
    handshake_hash: bytes
    session: Session
    #: The responder's decision on the initiator's key; None on the initiator's side.
    trust_decision: TrustDecision | None


def _expect_hello(payload: bytes, which: str) -> Hello:
    message = decode(payload)
    if not isinstance(message, Hello):
        raise RemoteProtocolError(f"{which} must carry Hello, not {type(message).__name__}")
    if message.protocol_version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"peer speaks protocol version {message.protocol_version}, we speak {PROTOCOL_VERSION}"
        )
    return message


def _expect_bundle(payload: bytes, which: str) -> WeightsBundle | None:
    message = decode(payload)
    if isinstance(message, NoBundle):
        return None
    if not isinstance(message, WeightsBundle):
        raise RemoteProtocolError(
            f"{which} must carry WeightsBundle or nothing, not {type(message).__name__}"
        )
    return message


def _bundle_payload(bundle: WeightsBundle | None, limit: int, which: str) -> bytes:
    payload = encode(bundle if bundle is not None else NoBundle())
    if len(payload) > limit:
        raise LocalProtocolError(
            f"our bundle encodes to {len(payload)} bytes; {which} holds at most {limit}"
        )
    return payload


class _Handshake:
    """The state discipline shared by both roles."""

    _transitions: dict[tuple[HandshakeState, _Verb], HandshakeState]

    def __init__(self, *, clock: Callable[[], float], settings: SessionSettings | None) -> None:
        self._state = HandshakeState.START
        self._clock = clock
        self._settings = settings
        self._ciphers: tuple[TransportCipher, TransportCipher] | None = None
        self._their_hello: Hello | None = None
        self._their_bundle: WeightsBundle | None = None

    @property
    def state(self) -> HandshakeState:
        return self._state

    def _run(self, verb: _Verb, action: Callable[[], _T]) -> _T:
        current = self._state
        next_state = self._transitions.get((current, verb))
        if next_state is None:
            self._state = HandshakeState.ERROR
            raise LocalProtocolError(f"cannot {verb.value} in state {current.name}")
        try:
            result = action()
        except HandshakeRejected:
            self._state = HandshakeState.CLOSED
            raise
        except BaseException:
            self._state = HandshakeState.ERROR
            raise
        self._state = next_state
        return result

    def _split(self, noise: NoiseXK, trust_decision: TrustDecision | None) -> HandshakeResult:
        def action() -> HandshakeResult:
            assert self._ciphers is not None and self._their_hello is not None
            their_static = noise.their_static_public()
            assert their_static is not None
            send_cipher, receive_cipher = self._ciphers
            session = Session(
                send_cipher=send_cipher,
                receive_cipher=receive_cipher,
                clock=self._clock,
                settings=self._settings,
            )
            return HandshakeResult(
                their_static_public=their_static,
                their_hello=self._their_hello,
                their_bundle=self._their_bundle,
                handshake_hash=noise.handshake_hash(),
                session=session,
                trust_decision=trust_decision,
            )

        return self._run(_Verb.SPLIT, action)


class InitiatorHandshake(_Handshake):
    """The connecting side: knows the responder's static key in advance (XK)."""

    _transitions = _INITIATOR_TRANSITIONS

    def __init__(
        self,
        *,
        identity: StaticIdentity,
        responder_static_public: bytes,
        our_hello: Hello,
        our_bundle: WeightsBundle | None,
        clock: Callable[[], float],
        settings: SessionSettings | None = None,
        prologue: bytes = PROLOGUE,
    ) -> None:
        super().__init__(clock=clock, settings=settings)
        self._our_hello = our_hello
        self._our_bundle = our_bundle
        self._noise = NoiseXK(
            initiator=True,
            identity=identity,
            their_static_public=responder_static_public,
            prologue=prologue,
        )

    def create_msg1(self) -> bytes:
        return self._run(_Verb.CREATE_MSG1, lambda: self._noise.write(encode(self._our_hello)))

    def consume_msg2(self, message: bytes) -> Hello:
        def action() -> Hello:
            hello = _expect_hello(self._noise.read(message), "message 2")
            self._their_hello = hello
            return hello

        return self._run(_Verb.CONSUME_MSG2, action)

    def create_msg3(self) -> bytes:
        def action() -> bytes:
            payload = _bundle_payload(self._our_bundle, MAX_HANDSHAKE_PAYLOAD[2], "message 3")
            message = self._noise.write(payload)
            self._ciphers = self._noise.split()
            return message

        return self._run(_Verb.CREATE_MSG3, action)

    def consume_first_transport(self, message: bytes) -> WeightsBundle | None:
        """The responder's bundle (None if it sent none); :class:`HandshakeRejected` on Bye."""

        def action() -> WeightsBundle | None:
            assert self._ciphers is not None
            if len(message) > MAX_NOISE_MESSAGE:
                raise RemoteProtocolError(f"first transport message is {len(message)} bytes")
            content = decode(self._ciphers[1].decrypt(message))
            if isinstance(content, Bye):
                raise HandshakeRejected(content.reason)
            if isinstance(content, NoBundle):
                return None
            if not isinstance(content, WeightsBundle):
                raise RemoteProtocolError(
                    f"first transport message must carry WeightsBundle, NoBundle or Bye, not"
                    f" {type(content).__name__}"
                )
            self._their_bundle = content
            return content

        return self._run(_Verb.CONSUME_FIRST_TRANSPORT, action)

    def split(self) -> HandshakeResult:
        return self._split(self._noise, None)


class ResponderHandshake(_Handshake):
    """The accepting side: learns and judges the initiator's static key at message 3."""

    _transitions = _RESPONDER_TRANSITIONS

    def __init__(
        self,
        *,
        identity: StaticIdentity,
        our_hello: Hello,
        our_bundle: WeightsBundle | None,
        trust_check: TrustCheck,
        clock: Callable[[], float],
        settings: SessionSettings | None = None,
        replay_cache: ReplayCache | None = None,
        prologue: bytes = PROLOGUE,
    ) -> None:
        super().__init__(clock=clock, settings=settings)
        self._our_hello = our_hello
        self._our_bundle = our_bundle
        self._trust_check = trust_check
        self._replay_cache = replay_cache
        self._trust_decision: TrustDecision | None = None
        self._noise = NoiseXK(
            initiator=False, identity=identity, their_static_public=None, prologue=prologue
        )

    @property
    def trust_decision(self) -> TrustDecision | None:
        return self._trust_decision

    def consume_msg1(self, message: bytes) -> Hello:
        def action() -> Hello:
            if self._replay_cache is not None:
                self._replay_cache.check_fresh(message)
            hello = _expect_hello(self._noise.read(message), "message 1")
            # Remembered only once authentic-looking, so garbage cannot evict real entries.
            if self._replay_cache is not None:
                self._replay_cache.remember(message)
            self._their_hello = hello
            return hello

        return self._run(_Verb.CONSUME_MSG1, action)

    def create_msg2(self) -> bytes:
        return self._run(_Verb.CREATE_MSG2, lambda: self._noise.write(encode(self._our_hello)))

    def consume_msg3(self, message: bytes) -> WeightsBundle | None:
        """The initiator's bundle (None if it sent none). Runs the trust check."""

        def action() -> WeightsBundle | None:
            payload = self._noise.read(message)
            bundle = _expect_bundle(payload, "message 3")
            their_static = self._noise.their_static_public()
            if their_static is None:  # noiseprotocol changed its internals: fail loudly
                raise LocalProtocolError("initiator's static key unavailable after message 3")
            self._trust_decision = TrustDecision(self._trust_check(their_static))
            self._ciphers = self._noise.split()
            # A rejected peer's weights are not kept, not even until the session ends.
            self._their_bundle = None if self._trust_decision is TrustDecision.REJECT else bundle
            return self._their_bundle

        return self._run(_Verb.CONSUME_MSG3, action)

    def create_first_transport(self) -> bytes:
        """Our bundle, NoBundle or Bye(NOT_TRUSTED), per the trust decision."""
        if self._trust_decision is TrustDecision.REJECT:
            return self._run(
                _Verb.CREATE_REJECTION,
                lambda: self._encrypt_first(encode(Bye(reason=ByeReason.NOT_TRUSTED))),
            )

        def action() -> bytes:
            bundle = self._our_bundle if self._trust_decision is TrustDecision.TRUSTED else None
            return self._encrypt_first(
                _bundle_payload(bundle, MAX_HANDSHAKE_PAYLOAD[2], "the first transport message")
            )

        return self._run(_Verb.CREATE_FIRST_TRANSPORT, action)

    def _encrypt_first(self, plaintext: bytes) -> bytes:
        assert self._ciphers is not None
        return self._ciphers[0].encrypt(plaintext)

    def split(self) -> HandshakeResult:
        return self._split(self._noise, self._trust_decision)
