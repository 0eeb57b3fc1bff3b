"""The encrypted session after the handshake: typed messages in, framed ciphertext out (sans-IO).

Theory of operation
-------------------
Each typed message is encoded as one Cap'n Proto envelope and encrypted as one Noise transport
message, framed by its 2-byte length. An envelope larger than one transport message
(:data:`~handshake.noise.MAX_TRANSPORT_PLAINTEXT`) is cut into ``Chunk`` envelopes, sent
back to back, and reassembled by the receiver into the original envelope.

Rekeying is part of the protocol, not a local decision, because noiseprotocol's rekey is manual
and both ends must switch keys at the same message. Each direction has an *epoch*. Before a
message, the sender checks its outbound epoch: if it holds ``rekey_after_messages - 1`` messages
already (room for one more) or is ``rekey_after_seconds`` old, it first sends a ``Rekey(epoch+1)``
notice under the old key, then rekeys its outbound cipher (Noise §4.2). The receiver rekeys its
inbound cipher when it decrypts that notice. Both sides run with the same settings, and the
receiver enforces them: more than ``rekey_after_messages`` messages in one epoch, an epoch older
than ``rekey_after_seconds`` plus :data:`REKEY_GRACE_SECONDS`, or a notice naming the wrong epoch
is a rekey mismatch, a :class:`RemoteProtocolError`. A peer that rekeys without a notice is caught
by the next message failing authentication.

Keys also age (WireGuard's REKEY_AFTER_TIME and REJECT_AFTER_TIME): a symmetric rekey protects
earlier epochs, but a session that runs for hours should also move to keys from a fresh
Diffie-Hellman exchange. So once the older of our two keys is ``rehandshake_after_seconds`` old,
a side runs a new XK exchange *inside* the session, as ``Rehandshake`` steps sealed under the
current keys, with the same static keys (both sides know both by now), its prologue binding it to
the previous exchange's handshake hash:

====  ==========  =============================================================================
step  direction   meaning
====  ==========  =============================================================================
1     A -> B      XK message 1 (``e, es``)
2     B -> A      XK message 2 (``e, ee``)
3     A -> B      XK message 3 (``s, se``); A's outbound key switches right after this message,
                  B's inbound key right after reading it (B checks the static key is the
                  session's peer)
4     B -> A      no payload; B's outbound key switches right after it, A's inbound on reading
====  ==========  =============================================================================

Messages keep flowing in both directions throughout (the application never waits), and the
switch points are message boundaries both sides see in the same order, as with ``Rekey``. If
both sides start at once, the exchange started by the side that initiated the session goes on
and the other side drops its own. Replies (steps 2-4) are produced while *receiving*, so the
stream collects them with :meth:`Session.data_to_send` (and :meth:`Session.send` returns them
ahead of its own frames). Keys are never used past ``reject_after_seconds``: sending an
application message on an older key raises :class:`SessionExpiredError`, and a frame that
arrives on an inbound key older than that (plus :data:`REKEY_GRACE_SECONDS`) is the peer's
protocol error. A session built without :class:`RehandshakeKeys` (tests) cannot renew and simply
expires.

States: ``OPEN`` -> ``CLOSED`` (we sent ``Bye`` or received one) and, from anywhere, ``ERROR``.
Any error on receive, or an illegal call, moves to ``ERROR``; every later call then raises
:class:`LocalProtocolError`. An error ends this session only: nothing here is shared.

The clock is injected (``Callable[[], float]``, seconds, monotonic), never read from ``time``.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn

from handshake.budget import MemoryBudget
from handshake.framing import MAX_PENDING_BYTES, NEED_DATA, FrameReader, NeedData
from handshake.noise import MAX_TRANSPORT_PLAINTEXT, NoiseXK, StaticIdentity, TransportCipher
from schemas.codec import NoBundle, Rehandshake, Rekey, WireMessage, decode, encode
from schemas.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from schemas.messages import Bye, ByeReason, Chunk, Hello, Message

#: WireGuard's anchors (REKEY_AFTER_TIME, REKEY_AFTER_MESSAGES in wireguard-go's constants).
REKEY_AFTER_SECONDS: Final = 120.0
REKEY_AFTER_MESSAGES: Final = 2**60
#: WireGuard's REKEY_AFTER_TIME and REJECT_AFTER_TIME: a fresh key exchange once a key is this
#: old, and no key used past the second.
REHANDSHAKE_AFTER_SECONDS: Final = 120.0
REJECT_AFTER_SECONDS: Final = 180.0
#: Prologue of an in-session key exchange (followed by the previous exchange's handshake hash).
REHANDSHAKE_PROLOGUE: Final = b"parley/1 rehandshake"
#: How much older than ``rekey_after_seconds`` a receiver lets an inbound epoch get: the sender
#: checks its epoch's age before it writes, and the message then spends network and scheduling
#: delay in transit; the receiver's epoch also started later than the sender's.
REKEY_GRACE_SECONDS: Final = 30.0
#: Largest envelope a session sends or reassembles from chunks (a few FL bundles' worth).
MAX_CHUNKED_PAYLOAD: Final = 4 * 1024 * 1024
#: Data bytes per chunk: the transport plaintext limit less a Chunk envelope's own overhead
#: (56-72 bytes, measured in tests), rounded down to the 8-byte word.
CHUNK_DATA_BYTES: Final = (MAX_TRANSPORT_PLAINTEXT - 128) // 8 * 8
#: Bytes all sessions together may hold in partly reassembled chunked messages and unconsumed
#: received bytes (a node-wide :class:`~handshake.budget.MemoryBudget`); one full-size message
#: each for 16 sessions at once.
REASSEMBLY_BUDGET_BYTES: Final = 16 * MAX_CHUNKED_PAYLOAD
#: Frames a peer may send per second before we call it a flood.
MAX_FRAMES_PER_SECOND: Final = 10_000
_EPOCH_LIMIT: Final = 2**32 - 1

_HEADER = struct.Struct(">H")
# Chunks are the session's own business; Hello belongs to the handshake.
_NOT_SENDABLE: Final = frozenset({Chunk, Hello})
# Handshake-only and session-internal kinds arriving mid-session mean a broken peer.
_NOT_RECEIVABLE: Final = frozenset({Hello, NoBundle, Rekey, Rehandshake, Chunk})


class SessionExpiredError(ProtocolError):
    """Our key reached ``reject_after_seconds`` without a fresh exchange: the session is over."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RehandshakeKeys:
    """What a session needs to run a fresh XK exchange inside itself (from its handshake)."""

    identity: StaticIdentity = field(repr=False)
    their_static_public: bytes
    #: We initiated the session's first handshake: our exchange wins when both start at once.
    initiated: bool
    #: The first handshake's hash, bound into the first renewal's prologue.
    handshake_hash: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSettings:
    """Limits and rekey schedule; both peers must run the same rekey values."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    rekey_after_seconds: float = REKEY_AFTER_SECONDS
    rehandshake_after_seconds: float = REHANDSHAKE_AFTER_SECONDS
    reject_after_seconds: float = REJECT_AFTER_SECONDS
    max_chunked_payload: int = MAX_CHUNKED_PAYLOAD
    max_frames_per_second: int = MAX_FRAMES_PER_SECOND
    max_pending_bytes: int = MAX_PENDING_BYTES
    #: Shared by every session built with these settings (chunk reassembly and the frame
    #: reader's unconsumed bytes); None: each session alone is bounded.
    reassembly_budget: MemoryBudget | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Two: room for at least one message and the epoch's closing notice.
        if self.rekey_after_messages < 2:
            raise ValueError("rekey_after_messages must be at least 2")
        if not (math.isfinite(self.rekey_after_seconds) and self.rekey_after_seconds > 0):
            raise ValueError("rekey_after_seconds must be a positive number")
        if not (
            math.isfinite(self.reject_after_seconds)
            and 0 < self.rehandshake_after_seconds < self.reject_after_seconds
        ):
            raise ValueError("need 0 < rehandshake_after_seconds < reject_after_seconds")
        if not 0 < self.max_chunked_payload <= MAX_CHUNKED_PAYLOAD * 64:
            raise ValueError("max_chunked_payload is out of range")
        if self.max_frames_per_second < 1:
            raise ValueError("max_frames_per_second must be positive")
        if self.max_pending_bytes < 2 * (MAX_TRANSPORT_PLAINTEXT + 18):
            raise ValueError("max_pending_bytes must hold at least two maximal frames")


class SessionState(enum.Enum):
    OPEN = enum.auto()
    CLOSED = enum.auto()
    ERROR = enum.auto()


class Session:
    """One side of an established session. Build it with a handshake's ``split()``."""

    def __init__(
        self,
        *,
        send_cipher: TransportCipher,
        receive_cipher: TransportCipher,
        clock: Callable[[], float],
        settings: SessionSettings | None = None,
        rehandshake: RehandshakeKeys | None = None,
    ) -> None:
        self.settings = settings if settings is not None else SessionSettings()
        self._clock = clock
        self._send_cipher = send_cipher
        self._receive_cipher = receive_cipher
        self._reader = FrameReader(
            max_pending_bytes=self.settings.max_pending_bytes,
            budget=self.settings.reassembly_budget,
        )
        self._state = SessionState.OPEN
        now = clock()
        # Epoch bookkeeping by nonce: both sides see the same nonces, so counts agree even when
        # the handshake already used nonce 0 for the responder's first transport message.
        self._our_epoch = 0
        self._our_epoch_first_nonce = 0
        self._our_epoch_started = now
        self._their_epoch = 0
        self._their_epoch_first_nonce = 0
        self._their_epoch_started = now
        self._next_chunked_id = 0
        self._reassembly: _Reassembly | None = None
        self._rate_window_started = now
        self._frames_in_window = 0
        # Key renewal (see the module docstring).
        self._rehandshake = rehandshake
        self._binding = rehandshake.handshake_hash if rehandshake is not None else b""
        self._our_key_born = now
        self._their_key_born = now
        self._exchange: NoiseXK | None = None
        self._exchange_ours = False  # we sent its step 1
        self._exchange_expects = 0  # the step we wait for
        self._next_receive_cipher: TransportCipher | None = None
        self._outbox = bytearray()
        #: Fresh key exchanges completed inside this session.
        self.rehandshakes = 0

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def exchange_pending(self) -> bool:
        """A key exchange inside the session is under way (it needs the peer's next step)."""
        return self._exchange is not None

    @property
    def our_epoch(self) -> int:
        return self._our_epoch

    @property
    def their_epoch(self) -> int:
        return self._their_epoch

    # --- sending ------------------------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """Encrypt and frame ``message``: the bytes to write, possibly several frames."""
        if self._state is not SessionState.OPEN:
            self._refuse("send")
        kind = type(message)
        if kind in _NOT_SENDABLE:
            raise LocalProtocolError(f"{kind.__name__} is not sent on a session")
        now = self._clock()
        if now - self._our_key_born >= self.settings.reject_after_seconds:
            self._fail()
            raise SessionExpiredError(
                f"our session key is {now - self._our_key_born:.0f} s old, past"
                f" {self.settings.reject_after_seconds:g} s without a fresh key exchange"
            )
        self._maybe_renew(now)
        plaintext = encode(message)
        if len(plaintext) <= MAX_TRANSPORT_PLAINTEXT:
            self._outbox += self._seal(plaintext)
        else:
            self._outbox += self._seal_chunked(plaintext)
        if kind is Bye:
            self._state = SessionState.CLOSED
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Frames the session produced on its own (key exchange steps, in order, ahead of
        anything sent after them): write them as soon as possible."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def close(self, reason: ByeReason = ByeReason.NORMAL) -> bytes:
        """The framed ``Bye`` to write last; the session is then CLOSED."""
        return self.send(Bye(reason=reason))

    def _seal_chunked(self, plaintext: bytes) -> bytes:
        size = len(plaintext)
        if size > self.settings.max_chunked_payload:
            raise LocalProtocolError(
                f"message is {size} bytes, over the chunked limit of"
                f" {self.settings.max_chunked_payload}"
            )
        message_id = self._next_chunked_id
        self._next_chunked_id = (message_id + 1) & 0xFFFFFFFF
        count = -(-size // CHUNK_DATA_BYTES)
        parts = [
            self._seal(
                encode(
                    Chunk(
                        message_id=message_id,
                        index=index,
                        count=count,
                        data=plaintext[index * CHUNK_DATA_BYTES : (index + 1) * CHUNK_DATA_BYTES],
                    )
                )
            )
            for index in range(count)
        ]
        return b"".join(parts)

    def _seal(self, plaintext: bytes) -> bytes:
        cipher = self._send_cipher
        prefix = b""
        if (
            cipher.nonce - self._our_epoch_first_nonce + 1 >= self.settings.rekey_after_messages
            or self._clock() - self._our_epoch_started >= self.settings.rekey_after_seconds
        ):
            prefix = self._rekey_outbound()
        ciphertext = cipher.encrypt(plaintext)
        return prefix + _HEADER.pack(len(ciphertext)) + ciphertext

    def _rekey_outbound(self) -> bytes:
        if self._our_epoch >= _EPOCH_LIMIT:
            raise LocalProtocolError("rekey epochs exhausted; the session must end")
        self._our_epoch += 1
        notice = self._send_cipher.encrypt(encode(Rekey(epoch=self._our_epoch)))
        self._send_cipher.rekey()
        self._our_epoch_first_nonce = self._send_cipher.nonce
        self._our_epoch_started = self._clock()
        return _HEADER.pack(len(notice)) + notice

    # --- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer (any slicing of the stream)."""
        if self._state is not SessionState.OPEN:
            self._refuse("receive data")
        try:
            self._reader.receive_data(data)
        except RemoteProtocolError:
            self._fail()
            raise

    def next_event(self) -> Message | NeedData:
        """The next complete message from the peer, or NEED_DATA."""
        if self._state is not SessionState.OPEN:
            self._refuse("read events")
        try:
            while True:
                self._maybe_renew(self._clock())
                frame = self._reader.next_frame_view()
                if frame is NEED_DATA:
                    return NEED_DATA
                event = self._open_frame(frame)
                if event is not None:
                    if isinstance(event, Bye):
                        self._state = SessionState.CLOSED
                        self.release_memory()
                    return event
        except RemoteProtocolError:
            self._fail()
            raise

    def _open_frame(self, frame: memoryview) -> Message | None:
        settings = self.settings
        now = self._clock()
        if now - self._rate_window_started >= 1.0:
            self._rate_window_started = now
            self._frames_in_window = 0
        self._frames_in_window += 1
        if self._frames_in_window > settings.max_frames_per_second:
            raise RemoteProtocolError(
                f"peer sent more than {settings.max_frames_per_second} frames in one second"
            )
        if now - self._their_key_born > settings.reject_after_seconds + REKEY_GRACE_SECONDS:
            raise RemoteProtocolError(
                f"peer kept using its session key for {now - self._their_key_born:.0f} s, past"
                f" {settings.reject_after_seconds:g} s without a fresh key exchange"
            )
        cipher = self._receive_cipher
        if cipher.nonce - self._their_epoch_first_nonce >= settings.rekey_after_messages:
            raise RemoteProtocolError(
                f"rekey mismatch: peer sent more than {settings.rekey_after_messages} messages"
                f" in epoch {self._their_epoch} without rekeying"
            )
        message = decode(cipher.decrypt(frame))
        kind = type(message)
        if kind is Rekey:
            # A notice may arrive in an epoch of any age: after an idle spell it is the first
            # thing the sender writes.
            assert isinstance(message, Rekey)
            self._rekey_inbound(message, now)
            return None
        if kind is Rehandshake:
            assert isinstance(message, Rehandshake)
            self._on_rehandshake(message, now)
            return None
        if now - self._their_epoch_started > settings.rekey_after_seconds + REKEY_GRACE_SECONDS:
            raise RemoteProtocolError(
                f"rekey mismatch: peer kept epoch {self._their_epoch} past"
                f" {settings.rekey_after_seconds} s"
            )
        if kind is Chunk:
            assert isinstance(message, Chunk)
            return self._add_chunk(message)
        if self._reassembly is not None:
            raise RemoteProtocolError(f"peer interleaved {kind.__name__} inside a chunked message")
        return self._accept(message)

    def _rekey_inbound(self, notice: Rekey, now: float) -> None:
        if notice.epoch != self._their_epoch + 1:
            raise RemoteProtocolError(
                f"rekey mismatch: peer announced epoch {notice.epoch}, expected"
                f" {self._their_epoch + 1}"
            )
        self._receive_cipher.rekey()
        self._their_epoch = notice.epoch
        self._their_epoch_first_nonce = self._receive_cipher.nonce
        self._their_epoch_started = now

    # --- key renewal ----------------------------------------------------------------------------

    def _maybe_renew(self, now: float) -> None:
        """Start a fresh key exchange (step 1) when the older key is due and none is running."""
        keys = self._rehandshake
        if (
            keys is None
            or self._exchange is not None
            or self._state is not SessionState.OPEN
            or now - min(self._our_key_born, self._their_key_born)
            < self.settings.rehandshake_after_seconds
        ):
            return
        noise = NoiseXK(
            initiator=True,
            identity=keys.identity,
            their_static_public=keys.their_static_public,
            prologue=REHANDSHAKE_PROLOGUE + self._binding,
        )
        self._exchange, self._exchange_ours, self._exchange_expects = noise, True, 2
        self._outbox += self._seal(encode(Rehandshake(step=1, noise=noise.write(b""))))

    def _on_rehandshake(self, message: Rehandshake, now: float) -> None:
        keys = self._rehandshake
        if keys is None:
            raise RemoteProtocolError("peer sent Rehandshake, which this session cannot run")
        step, exchange = message.step, self._exchange
        if step == 1:
            if exchange is not None:
                # Only a crossing of two step 1s is legitimate (neither side answered yet).
                if not self._exchange_ours or self._exchange_expects != 2:
                    raise RemoteProtocolError("rehandshake step 1 while one is under way")
                if keys.initiated:
                    return  # both started: ours goes on, the peer drops its own
            exchange = NoiseXK(
                initiator=False,
                identity=keys.identity,
                their_static_public=None,
                prologue=REHANDSHAKE_PROLOGUE + self._binding,
            )
            _expect_empty(exchange.read(message.noise))
            self._exchange, self._exchange_ours, self._exchange_expects = exchange, False, 3
            self._outbox += self._seal(encode(Rehandshake(step=2, noise=exchange.write(b""))))
            return
        if exchange is None or step != self._exchange_expects:
            raise RemoteProtocolError(
                f"rehandshake step {step} out of order"
                f" (expected {self._exchange_expects or 'none'})"
            )
        if step == 2:
            _expect_empty(exchange.read(message.noise))
            last_on_old_key = self._seal(encode(Rehandshake(step=3, noise=exchange.write(b""))))
            send, self._next_receive_cipher = exchange.split()
            self._outbox += last_on_old_key
            self._switch_outbound(send, now)
            self._exchange_expects = 4
        elif step == 3:
            _expect_empty(exchange.read(message.noise))
            if exchange.their_static_public() != keys.their_static_public:
                raise RemoteProtocolError("rehandshake from a static key other than the peer's")
            send, receive = exchange.split()
            self._switch_inbound(receive, now)
            self._outbox += self._seal(encode(Rehandshake(step=4, noise=b"")))
            self._switch_outbound(send, now)
            self._finish_exchange(exchange)
        else:  # 4
            assert self._next_receive_cipher is not None
            self._switch_inbound(self._next_receive_cipher, now)
            self._next_receive_cipher = None
            self._finish_exchange(exchange)

    def _switch_outbound(self, cipher: TransportCipher, now: float) -> None:
        self._send_cipher = cipher
        self._our_epoch, self._our_epoch_first_nonce = 0, cipher.nonce
        self._our_epoch_started = self._our_key_born = now

    def _switch_inbound(self, cipher: TransportCipher, now: float) -> None:
        self._receive_cipher = cipher
        self._their_epoch, self._their_epoch_first_nonce = 0, cipher.nonce
        self._their_epoch_started = self._their_key_born = now

    def _finish_exchange(self, exchange: NoiseXK) -> None:
        self._binding = exchange.handshake_hash()
        self._exchange, self._exchange_expects = None, 0
        self.rehandshakes += 1

    def _add_chunk(self, chunk: Chunk) -> Message | None:
        reassembly = self._reassembly
        if reassembly is None:
            max_count = -(-self.settings.max_chunked_payload // CHUNK_DATA_BYTES)
            if chunk.index != 0 or not 2 <= chunk.count <= max_count:
                raise RemoteProtocolError(
                    f"chunked message starts with chunk {chunk.index} of {chunk.count}"
                    f" (must be chunk 0 of 2..{max_count})"
                )
            reassembly = self._reassembly = _Reassembly(chunk.message_id, chunk.count)
        elif (
            chunk.message_id != reassembly.message_id
            or chunk.count != reassembly.count
            or chunk.index != len(reassembly.parts)
        ):
            raise RemoteProtocolError(
                f"chunk {chunk.index}/{chunk.count} of message {chunk.message_id} out of order"
                f" (expected {len(reassembly.parts)}/{reassembly.count} of"
                f" {reassembly.message_id})"
            )
        if not 0 < len(chunk.data) <= CHUNK_DATA_BYTES:
            raise RemoteProtocolError(
                f"chunk holds {len(chunk.data)} bytes (1..{CHUNK_DATA_BYTES})"
            )
        if reassembly.size + len(chunk.data) > self.settings.max_chunked_payload:
            raise RemoteProtocolError(
                f"chunked message exceeds {self.settings.max_chunked_payload} bytes"
            )
        budget = self.settings.reassembly_budget
        if budget is not None and not budget.try_reserve(len(chunk.data)):
            raise RemoteProtocolError(
                f"chunk reassembly budget of {budget.total_bytes} bytes is spent (node-wide)"
            )
        reassembly.parts.append(chunk.data)
        reassembly.size += len(chunk.data)
        if len(reassembly.parts) < reassembly.count:
            return None
        self.discard_partial()
        message = decode(b"".join(reassembly.parts))
        if isinstance(message, Chunk | Rekey | Rehandshake):
            raise RemoteProtocolError(f"a chunked message may not hold a {type(message).__name__}")
        return self._accept(message)

    def _accept(self, message: WireMessage) -> Message:
        if type(message) in _NOT_RECEIVABLE or isinstance(message, Rekey | Rehandshake | NoBundle):
            # (The isinstance repeats the set lookup for the type checker's sake.)
            raise RemoteProtocolError(f"peer sent {type(message).__name__} inside a session")
        return message

    def discard_partial(self) -> None:
        """Drop a partly received chunked message and give its bytes back to the budget (the
        session ended, failed, or the message is complete). Safe to call more than once."""
        reassembly, self._reassembly = self._reassembly, None
        if reassembly is not None and self.settings.reassembly_budget is not None:
            self.settings.reassembly_budget.release(reassembly.size)

    def release_memory(self) -> None:
        """Give back everything held for the peer (a partial chunked message and unconsumed
        received bytes): the session is over. Safe to call more than once."""
        self.discard_partial()
        self._reader.release()

    def _fail(self) -> None:
        self._state = SessionState.ERROR
        self.release_memory()

    def _refuse(self, action: str) -> NoReturn:
        current = self._state
        self._fail()
        raise LocalProtocolError(f"cannot {action}: session is {current.name}")


def _expect_empty(payload: bytes) -> None:
    if payload:
        raise RemoteProtocolError("a rehandshake message carries no payload")


class _Reassembly:
    """The chunks of one chunked message received so far."""

    __slots__ = ("count", "message_id", "parts", "size")

    def __init__(self, message_id: int, count: int) -> None:
        self.message_id = message_id
        self.count = count
        self.parts: list[bytes] = []
        self.size = 0
