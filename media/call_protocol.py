"""The call as a protocol: one sans-IO state machine for both roles (STYLE.md 4, 19).

Theory of operation
-------------------
A call rides on an established session. This object never touches a socket, a sound device or
trio: the shell hands it every call message the peer sent (:meth:`CallProtocol.receive_message`)
and every local decision (place, answer, decline, hang up, media sent), and it hands back typed
events (:data:`CallEvent`) plus the messages to send (:meth:`CallProtocol.messages_to_send`,
drained like h2's ``data_to_send``). Time comes from an injected clock; the shell calls
:meth:`CallProtocol.tick` at :meth:`CallProtocol.next_deadline` (ring timeout, longest call,
waiting for the peer's ``CallEnd``).

The messages are today's (``schemas.messages``); the call is symmetric:

====================  ==================  =================================================
message               direction           meaning
====================  ==================  =================================================
``CallStart``         caller -> callee    the call rings: the caller's languages, codec, voice
``CallStart``         callee -> caller    the answer (same ``call_id``): the callee's codec
                                          and voice, so the caller can decode it in turn
``CodecFrames``       both, after answer  each side's own user's audio
``Caption``           both, after answer  captions of the speech each side received
``CallEnd``           either              ends the call; both sides send one, the second
                                          carries the sender's listener summary
====================  ==================  =================================================

States (:class:`CallState`) and the transition table (``_TRANSITIONS``, keyed by state and
:class:`_Input`)::

    caller: IDLE --place--> RINGING --their CallStart--> ANSWERED --first frames--> IN_CALL
    callee: IDLE --their CallStart--> RINGING --answer--> ANSWERED --first frames--> IN_CALL
    ANSWERED / IN_CALL --hang up or their CallEnd--> ENDING --the other CallEnd--> ENDED
    RINGING --decline, their CallEnd, ring timeout--> ENDED

Whatever the peer sends never raises: a message that has no place in the current state (a
``CodecFrames`` before the answer, a second ``CallStart``, another call's ``CallEnd``, a
``WeightsBundle``) ends the call with :attr:`CallEndReason.PROTOCOL_ERROR`, sends our
``CallEnd`` naming it and reports :class:`CallEnded`. Messages that arrive after the call ended
are counted and dropped (frames still in flight). A *local* verb in the wrong state is our bug:
it moves the machine to ``ERROR`` and raises :class:`LocalCallError`, as does every later call.

``Ping``/``Pong`` keep the session alive and are not the call's business (no event); ``Bye``
means the peer left the session: the call ends with :attr:`CallEndReason.PEER_LEFT`.

End reasons travel as ``"<code>: <detail>"`` in ``CallEnd.reason`` (:func:`format_end_reason`);
:func:`parse_end_reason` also maps the free-text reasons today's nodes send (``"completed"``,
``"busy: ..."``, trust and codec refusals) so old and new nodes understand each other.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from schemas.errors import LocalProtocolError
from schemas.messages import (
    Bye,
    CallEnd,
    CallStart,
    Caption,
    CodecFrames,
    Message,
    Ping,
    Pong,
)

#: ``CallEnd.reason`` holds at most this many characters (longer details are cut).
MAX_REASON_CHARS: Final = 256
#: A call nobody answers ends after this long (both sides time it).
DEFAULT_RING_TIMEOUT_S: Final = 30.0
#: After our ``CallEnd`` the peer's ``CallEnd`` (with its final captions first) must come within
#: this long; its listener flushes Whisper and the translator first.
DEFAULT_END_TIMEOUT_S: Final = 120.0
#: The longest call, from the answer.
DEFAULT_MAX_DURATION_S: Final = 3600.0


class LocalCallError(LocalProtocolError):
    """We used the call machine wrongly (a verb in a state that does not allow it)."""


class CallRole(enum.Enum):
    CALLER = "caller"
    CALLEE = "callee"


class CallState(enum.Enum):
    IDLE = "idle"
    RINGING = "ringing"
    ANSWERED = "answered"
    IN_CALL = "in call"
    ENDING = "ending"
    ENDED = "ended"
    ERROR = "error"


class CallEndReason(enum.Enum):
    """Why a call ended; ``value`` is the code that leads ``CallEnd.reason`` on the wire."""

    #: Both sides finished normally (the listener's reply to a hang-up).
    COMPLETED = "completed"
    #: A user hung up (or the caller's file ran out).
    HANGUP = "hangup"
    #: Nobody answered within the ring timeout.
    NO_ANSWER = "no_answer"
    #: The callee's user, or its ``call.answer = "never"``, said no.
    DECLINED = "declined"
    #: The callee's trust rules refuse this caller.
    NOT_TRUSTED = "not_trusted"
    #: The callee is at a limit (calls at once, calls per hour, recognizer load).
    BUSY = "busy"
    #: The codec announced cannot be used (missing bundle, mismatch, implausible settings).
    CODEC = "codec"
    #: The peer broke a media limit (rate, size, order).
    LIMIT = "limit"
    #: The call reached the longest call allowed.
    MAX_DURATION = "max_duration"
    #: The ending side failed (models, disk).
    FAILURE = "failure"
    #: A message that has no place in the call's current state.
    PROTOCOL_ERROR = "protocol_error"
    #: A refusal whose reason this node does not know.
    REFUSED = "refused"
    #: Local only: the peer closed the session (``Bye``) without ending the call.
    PEER_LEFT = "peer_left"
    #: Local only: the session broke.
    SESSION_BROKEN = "session_broken"
    #: Local only: the peer's ``CallEnd`` did not come within the end timeout.
    END_TIMEOUT = "end_timeout"


_BY_CODE: Final = {reason.value: reason for reason in CallEndReason}

# Today's nodes (before this module) send free text; these prefixes are exactly what
# daemon/calls.py and daemon/trust_policy.py write. Only for them: new nodes send a code.
_LEGACY_PREFIXES: Final = (
    ("calls are accepted from", CallEndReason.NOT_TRUSTED),
    ("calls are not accepted from", CallEndReason.NOT_TRUSTED),
    ("no codec bundle", CallEndReason.CODEC),
    ("codec version mismatch", CallEndReason.CODEC),
    ("codec architecture mismatch", CallEndReason.CODEC),
    ("codec settings do not match", CallEndReason.CODEC),
    ("unusable codec", CallEndReason.CODEC),
    ("the call reached this node's longest call", CallEndReason.MAX_DURATION),
    ("listener failure", CallEndReason.FAILURE),
    ("cannot start the call", CallEndReason.FAILURE),
    ("cannot load the call's models", CallEndReason.FAILURE),
)


def format_end_reason(reason: CallEndReason, detail: str = "") -> str:
    """``CallEnd.reason`` for ``reason``: its code, then the one-line detail (bounded)."""
    text = reason.value if not detail else f"{reason.value}: {' '.join(detail.split())}"
    return text[:MAX_REASON_CHARS]


def parse_end_reason(text: str) -> tuple[CallEndReason, str]:
    """The typed reason and the detail in a peer's ``CallEnd.reason`` (never raises).

    ``"<code>"`` or ``"<code>: <detail>"`` for every :class:`CallEndReason` code; today's
    free-text reasons by their fixed prefixes; anything else is :attr:`CallEndReason.REFUSED`
    with the text as the detail.
    """
    code, colon, rest = text.partition(":")
    known = _BY_CODE.get(code.strip())
    if known is not None and (colon or code.strip() == text.strip()):
        return known, rest.strip()
    for prefix, legacy in _LEGACY_PREFIXES:
        if text.startswith(prefix):
            return legacy, text
    return CallEndReason.REFUSED, text.strip()


class AnswerPolicy(enum.Enum):
    """``call.answer``: how this node answers a call that passed the trust check."""

    #: Answer trusted peers at once; other admitted callers ring (the default).
    TRUSTED = "trusted"
    #: Every call rings until the user answers (``parley answer ID``) or it times out.
    ASK = "ask"
    #: Take no calls (do not disturb): every call is declined.
    NEVER = "never"


class AnswerDecision(enum.Enum):
    ANSWER = "answer"
    RING = "ring"
    DECLINE = "decline"


def decide_answer(policy: AnswerPolicy, *, caller_trusted: bool) -> AnswerDecision:
    """What ``call.answer`` does with an incoming call (admission by trust comes before)."""
    if policy is AnswerPolicy.NEVER:
        return AnswerDecision.DECLINE
    if policy is AnswerPolicy.TRUSTED and caller_trusted:
        return AnswerDecision.ANSWER
    return AnswerDecision.RING


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """Callee: a call rings. ``decision`` is ``call.answer``'s; DECLINE was already sent."""

    start: CallStart
    decision: AnswerDecision


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """Caller: the callee answered with its own ``CallStart`` (its codec, voice, languages)."""

    their_start: CallStart


@dataclass(frozen=True, slots=True)
class FramesReceived:
    frames: CodecFrames


@dataclass(frozen=True, slots=True)
class CaptionReceived:
    caption: Caption


@dataclass(frozen=True, slots=True)
class PeerEnding:
    """The peer sent ``CallEnd`` first: flush our listener, then :meth:`CallProtocol.hang_up`
    (with our summary) sends ours and ends the call."""

    reason: CallEndReason
    detail: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    summary: CallSummary


CallEvent = IncomingCall | CallAnswered | FramesReceived | CaptionReceived | PeerEnding | CallEnded


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSummary:
    """How a call went, as the machine saw it (the media figures are the shell's)."""

    call_id: int
    role: CallRole
    reason: CallEndReason
    detail: str
    #: True when we ended it (our CallEnd, or a local reason such as a timeout), False when the
    #: peer did.
    ended_by_us: bool
    answered: bool
    #: From ringing to the answer (None: never answered).
    ring_s: float | None
    #: From the answer to the end (0.0 when never answered).
    duration_s: float
    frames_sent: int
    frames_received: int
    captions_sent: int
    captions_received: int
    #: The peer's listener summary from its ``CallEnd`` (JSON text, unchecked), "" if none.
    their_summary_json: str
    #: The reason the peer's ``CallEnd`` gave (None: it sent none), even when ours came first.
    their_reason: CallEndReason | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTimeouts:
    ring_s: float = DEFAULT_RING_TIMEOUT_S
    end_s: float = DEFAULT_END_TIMEOUT_S
    max_duration_s: float = DEFAULT_MAX_DURATION_S

    def __post_init__(self) -> None:
        for name in ("ring_s", "end_s", "max_duration_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


# -- the machine ---------------------------------------------------------------------------


class _Input(enum.Enum):
    PLACE = "place the call"
    THEIR_START = "receive CallStart"
    ANSWER = "answer"
    DECLINE = "decline"
    FRAMES = "media frames"
    CAPTION = "a caption"
    HANG_UP = "hang up"
    THEIR_END = "receive CallEnd"
    FINISH = "end"


_S = CallState
_I = _Input
# Shared by both roles; the role-specific entries are added below. Absent pairs are illegal:
# from the peer they end the call (PROTOCOL_ERROR), from us they raise LocalCallError.
_COMMON: Final = {
    (_S.RINGING, _I.THEIR_END): _S.ENDED,
    (_S.RINGING, _I.FINISH): _S.ENDED,
    (_S.ANSWERED, _I.FRAMES): _S.IN_CALL,
    (_S.ANSWERED, _I.CAPTION): _S.ANSWERED,
    (_S.ANSWERED, _I.HANG_UP): _S.ENDING,
    (_S.ANSWERED, _I.THEIR_END): _S.ENDING,
    (_S.ANSWERED, _I.FINISH): _S.ENDED,
    (_S.IN_CALL, _I.FRAMES): _S.IN_CALL,
    (_S.IN_CALL, _I.CAPTION): _S.IN_CALL,
    (_S.IN_CALL, _I.HANG_UP): _S.ENDING,
    (_S.IN_CALL, _I.THEIR_END): _S.ENDING,
    (_S.IN_CALL, _I.FINISH): _S.ENDED,
    # ENDING: one CallEnd went out or came in; the other one ends the call. Which direction
    # may still carry media is checked in CallProtocol (frames in flight vs after their end).
    (_S.ENDING, _I.FRAMES): _S.ENDING,
    (_S.ENDING, _I.CAPTION): _S.ENDING,
    (_S.ENDING, _I.HANG_UP): _S.ENDED,
    (_S.ENDING, _I.THEIR_END): _S.ENDED,
    (_S.ENDING, _I.FINISH): _S.ENDED,
}
_TRANSITIONS: Final = {
    CallRole.CALLER: {
        **_COMMON,
        (_S.IDLE, _I.PLACE): _S.RINGING,
        (_S.RINGING, _I.THEIR_START): _S.ANSWERED,
        (_S.RINGING, _I.HANG_UP): _S.ENDED,
    },
    CallRole.CALLEE: {
        **_COMMON,
        (_S.IDLE, _I.THEIR_START): _S.RINGING,
        (_S.RINGING, _I.ANSWER): _S.ANSWERED,
        (_S.RINGING, _I.DECLINE): _S.ENDED,
    },
}


class CallProtocol:
    """One call, one role. See the module docstring."""

    def __init__(
        self,
        *,
        role: CallRole,
        clock: Callable[[], float],
        answer_policy: AnswerPolicy = AnswerPolicy.TRUSTED,
        caller_trusted: bool = False,
        timeouts: CallTimeouts | None = None,
    ) -> None:
        self.role = role
        self._clock = clock
        self._answer_policy = answer_policy
        self._caller_trusted = caller_trusted
        self._timeouts = timeouts if timeouts is not None else CallTimeouts()
        self._transitions = _TRANSITIONS[role]
        self._state = CallState.IDLE
        self._outbox: list[Message] = []
        self._call_id: int | None = None
        self._our_start: CallStart | None = None
        self._their_start: CallStart | None = None
        self._ringing_at: float | None = None
        self._answered_at: float | None = None
        self._ending_at: float | None = None
        self._we_sent_end = False
        self._our_end: CallEnd | None = None
        self._they_sent_end = False
        self._first_end: tuple[CallEndReason, str, bool] | None = None
        self._their_summary_json = ""
        self._their_reason: CallEndReason | None = None
        self._frames_sent = 0
        self._frames_received = 0
        self._captions_sent = 0
        self._captions_received = 0
        self._late_messages = 0
        self._summary: CallSummary | None = None
        self._local_error: str | None = None

    # -- what the shell reads ------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self._state

    @property
    def call_id(self) -> int | None:
        return self._call_id

    @property
    def their_start(self) -> CallStart | None:
        return self._their_start

    @property
    def summary(self) -> CallSummary | None:
        """Set once the call is ENDED."""
        return self._summary

    @property
    def our_end(self) -> CallEnd | None:
        """The ``CallEnd`` we sent (None: none yet)."""
        return self._our_end

    @property
    def our_end_sent(self) -> bool:
        """Our ``CallEnd`` went out: no more frames or captions from us."""
        return self._we_sent_end

    @property
    def late_messages(self) -> int:
        """Call messages that came after the end (frames in flight): counted and dropped."""
        return self._late_messages

    def messages_to_send(self) -> list[Message]:
        """The messages produced since the last call, in order; the shell sends them all."""
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (clock time), or None."""
        if self._state is CallState.RINGING and self._ringing_at is not None:
            return self._ringing_at + self._timeouts.ring_s
        if self._state in (CallState.ANSWERED, CallState.IN_CALL):
            assert self._answered_at is not None
            return self._answered_at + self._timeouts.max_duration_s
        if self._state is CallState.ENDING and self._we_sent_end and not self._they_sent_end:
            assert self._ending_at is not None
            return self._ending_at + self._timeouts.end_s
        return None

    # -- local verbs -----------------------------------------------------------------------

    def place(self, our_start: CallStart) -> None:
        """Caller: ring the callee with ``our_start`` (queues it)."""
        self._local(_Input.PLACE)
        self._call_id = our_start.call_id
        self._our_start = our_start
        self._ringing_at = self._clock()
        self._outbox.append(our_start)
        self._state = CallState.RINGING

    def answer(self, our_start: CallStart) -> None:
        """Callee: answer with our own ``CallStart`` (same call id; our codec and voice)."""
        self._local(_Input.ANSWER)
        if our_start.call_id != self._call_id:
            self._fail_locally(
                f"answer names call {our_start.call_id}, the ringing call is {self._call_id}"
            )
        self._our_start = our_start
        self._answered_at = self._clock()
        self._outbox.append(our_start)
        self._state = CallState.ANSWERED

    def decline(self, reason: CallEndReason, detail: str = "") -> list[CallEvent]:
        """Callee: refuse the ringing call (user said no, busy, no codec for it, ...)."""
        self._local(_Input.DECLINE)
        return self._end(reason, detail, by_us=True, send=True)

    def send_frames(self, frames: CodecFrames) -> None:
        """Our user's audio: queues ``frames`` (allowed from the answer until our CallEnd)."""
        self._local(_Input.FRAMES)
        if self._we_sent_end:
            self._fail_locally("no frames may follow our CallEnd")
        self._frames_sent += 1
        self._outbox.append(frames)
        self._state = self._transitions[(self._state, _Input.FRAMES)]

    def send_caption(self, caption: Caption) -> None:
        """A caption of the peer's speech, for the peer (allowed until our CallEnd)."""
        self._local(_Input.CAPTION)
        if self._we_sent_end:
            self._fail_locally("no captions may follow our CallEnd")
        self._captions_sent += 1
        self._outbox.append(caption)

    def hang_up(
        self, reason: CallEndReason = CallEndReason.HANGUP, detail: str = "", summary_json: str = ""
    ) -> list[CallEvent]:
        """End the call: our ``CallEnd`` (with our listener summary) goes out.

        Ringing (caller): the call ends at once. Answered or in call: ENDING until the peer's
        ``CallEnd``. After :class:`PeerEnding`: the call ends (the reason stays the peer's).
        """
        self._local(_Input.HANG_UP)
        if self._state is CallState.RINGING:
            return self._end(reason, detail, by_us=True, send=True)
        if self._state is CallState.ENDING and self._we_sent_end:
            self._fail_locally("our CallEnd was already sent")
        self._send_end(reason, detail, summary_json)
        if self._they_sent_end:
            return self._finish()
        self._first_end = (reason, detail, True)
        self._ending_at = self._clock()
        self._state = CallState.ENDING
        return []

    def abort(self, reason: CallEndReason, detail: str = "") -> list[CallEvent]:
        """End now, without waiting for the peer's ``CallEnd`` (a limit the peer broke, our own
        failure): our ``CallEnd`` goes out unless it already did."""
        self._refuse_if_error()
        if self._state in (CallState.ENDED, CallState.IDLE):
            self._fail_locally(f"cannot abort the call while {self._state.value}")
        return self._end(reason, detail, by_us=True, send=True)

    def session_broken(self) -> list[CallEvent]:
        """The session under the call broke: the call ends, nothing is sent."""
        if self._state in (CallState.ENDED, CallState.ERROR):
            return []
        if self._state is CallState.IDLE:
            self._state = CallState.ENDED
            return []
        return self._end(CallEndReason.SESSION_BROKEN, "", by_us=True, send=False)

    def tick(self) -> list[CallEvent]:
        """Apply the timeouts due at the clock's current time."""
        self._refuse_if_error()
        deadline = self.next_deadline()
        if deadline is None or self._clock() < deadline:
            return []
        if self._state is CallState.RINGING:
            return self._end(CallEndReason.NO_ANSWER, "nobody answered", by_us=True, send=True)
        if self._state in (CallState.ANSWERED, CallState.IN_CALL):
            seconds = f"{self._timeouts.max_duration_s:g}"
            return self._end(
                CallEndReason.MAX_DURATION,
                f"the call reached this node's longest call ({seconds} s)",
                by_us=True,
                send=True,
            )
        # ENDING, our CallEnd out, theirs never came.
        return self._end(CallEndReason.END_TIMEOUT, "", by_us=True, send=False)

    # -- the peer's messages ---------------------------------------------------------------

    def receive_message(self, message: Message) -> list[CallEvent]:
        """One message from the peer. Never raises for anything the peer sends."""
        self._refuse_if_error()
        if isinstance(message, Ping | Pong):
            return []
        if self._state is CallState.ENDED:
            self._late_messages += 1
            return []
        if isinstance(message, Bye):
            if self._state is CallState.IDLE:
                self._state = CallState.ENDED
                return []
            return self._end(CallEndReason.PEER_LEFT, message.reason.name, by_us=False, send=False)
        if isinstance(message, CallStart):
            return self._their_call_start(message)
        if isinstance(message, CodecFrames):
            return self._their_frames(message)
        if isinstance(message, Caption):
            return self._their_caption(message)
        if isinstance(message, CallEnd):
            return self._their_call_end(message)
        return self._violation(f"{type(message).__name__} has no place in a call")

    def _their_call_start(self, start: CallStart) -> list[CallEvent]:
        if (self._state, _Input.THEIR_START) not in self._transitions:
            return self._violation(f"CallStart while {self._state.value}")
        if self.role is CallRole.CALLEE:
            self._call_id = start.call_id
            self._their_start = start
            self._ringing_at = self._clock()
            self._state = CallState.RINGING
            decision = decide_answer(self._answer_policy, caller_trusted=self._caller_trusted)
            events: list[CallEvent] = [IncomingCall(start, decision)]
            if decision is AnswerDecision.DECLINE:
                events += self._end(
                    CallEndReason.DECLINED,
                    f"this node takes no calls (call.answer = {self._answer_policy.value})",
                    by_us=True,
                    send=True,
                )
            return events
        if start.call_id != self._call_id:
            return self._violation(
                f"the answer names call {start.call_id}, we placed {self._call_id}"
            )
        self._their_start = start
        self._answered_at = self._clock()
        self._state = CallState.ANSWERED
        return [CallAnswered(start)]

    def _their_frames(self, frames: CodecFrames) -> list[CallEvent]:
        if (self._state, _Input.FRAMES) not in self._transitions or self._they_sent_end:
            after = "after its CallEnd" if self._they_sent_end else f"while {self._state.value}"
            return self._violation(f"CodecFrames {after}")
        self._frames_received += 1
        self._state = self._transitions[(self._state, _Input.FRAMES)]
        return [FramesReceived(frames)]

    def _their_caption(self, caption: Caption) -> list[CallEvent]:
        if (self._state, _Input.CAPTION) not in self._transitions or self._they_sent_end:
            after = "after its CallEnd" if self._they_sent_end else f"while {self._state.value}"
            return self._violation(f"Caption {after}")
        self._captions_received += 1
        return [CaptionReceived(caption)]

    def _their_call_end(self, end: CallEnd) -> list[CallEvent]:
        if self._state is CallState.IDLE:
            return self._violation("CallEnd before any call")
        if end.call_id != self._call_id:
            return self._violation(f"CallEnd for call {end.call_id}, this is {self._call_id}")
        if self._they_sent_end:
            return self._violation("a second CallEnd")
        reason, detail = parse_end_reason(end.reason)
        self._their_reason = reason
        self._their_summary_json = end.summary_json
        self._they_sent_end = True
        if self._state is CallState.RINGING:
            return self._end(reason, detail, by_us=False, send=False)
        if self._we_sent_end:
            return self._finish()
        self._first_end = (reason, detail, False)
        self._ending_at = self._clock()
        self._state = CallState.ENDING
        return [PeerEnding(reason, detail)]

    # -- internals ---------------------------------------------------------------------------

    def _violation(self, what: str) -> list[CallEvent]:
        if self._state is CallState.IDLE:
            # No call to end: the shell counts it and drops the session's call context.
            self._state = CallState.ENDED
            self._call_id = 0
            self._first_end = (CallEndReason.PROTOCOL_ERROR, what, True)
            self._outbox.append(
                CallEnd(call_id=0, reason=format_end_reason(CallEndReason.PROTOCOL_ERROR, what))
            )
            return self._finish()
        return self._end(CallEndReason.PROTOCOL_ERROR, what, by_us=True, send=True)

    def _end(
        self, reason: CallEndReason, detail: str, *, by_us: bool, send: bool
    ) -> list[CallEvent]:
        """End now (a timeout, a violation, a refusal, a broken session): the FINISH move."""
        if (self._state, _Input.FINISH) not in self._transitions:
            self._fail_locally(f"cannot end the call while {self._state.value}")
        if send and not self._we_sent_end:
            self._send_end(reason, detail, "")
        self._first_end = (reason, detail, by_us)
        return self._finish()

    def _send_end(self, reason: CallEndReason, detail: str, summary_json: str) -> None:
        assert self._call_id is not None
        self._we_sent_end = True
        self._our_end = CallEnd(
            call_id=self._call_id,
            reason=format_end_reason(reason, detail),
            summary_json=summary_json,
        )
        self._outbox.append(self._our_end)

    def _finish(self) -> list[CallEvent]:
        assert self._first_end is not None
        reason, detail, by_us = self._first_end
        now = self._clock()
        answered = self._answered_at is not None
        self._summary = CallSummary(
            call_id=self._call_id if self._call_id is not None else 0,
            role=self.role,
            reason=reason,
            detail=detail,
            ended_by_us=by_us,
            answered=answered,
            ring_s=(
                self._answered_at - self._ringing_at
                if self._answered_at is not None and self._ringing_at is not None
                else None
            ),
            duration_s=now - self._answered_at if self._answered_at is not None else 0.0,
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            captions_sent=self._captions_sent,
            captions_received=self._captions_received,
            their_summary_json=self._their_summary_json,
            their_reason=self._their_reason,
        )
        self._state = CallState.ENDED
        return [CallEnded(self._summary)]

    def _local(self, verb: _Input) -> None:
        self._refuse_if_error()
        if (self._state, verb) not in self._transitions:
            self._fail_locally(f"cannot {verb.value} while {self._state.value} ({self.role.value})")

    def _fail_locally(self, what: str) -> None:
        self._state = CallState.ERROR
        self._local_error = what
        raise LocalCallError(what)

    def _refuse_if_error(self) -> None:
        if self._state is CallState.ERROR:
            raise LocalCallError(f"the call machine is broken: {self._local_error}")


__all__ = [
    "AnswerDecision",
    "AnswerPolicy",
    "CallAnswered",
    "CallEndReason",
    "CallEnded",
    "CallEvent",
    "CallProtocol",
    "CallRole",
    "CallState",
    "CallSummary",
    "CallTimeouts",
    "CaptionReceived",
    "FramesReceived",
    "IncomingCall",
    "LocalCallError",
    "PeerEnding",
    "decide_answer",
    "format_end_reason",
    "parse_end_reason",
]
