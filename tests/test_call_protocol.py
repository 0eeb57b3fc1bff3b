"""The call state machine as in-memory caller/callee pairs: no sockets, no sound devices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.call_admission import PeerCallLimits
from daemon.database import PeerRecord, PeerSource, TrustState
from daemon.trust_policy import call_refusal
from media.call_protocol import (
    AnswerDecision,
    AnswerPolicy,
    CallAnswered,
    CallEnded,
    CallEndReason,
    CallEvent,
    CallProtocol,
    CallRole,
    CallState,
    CallTimeouts,
    CaptionReceived,
    FramesReceived,
    IncomingCall,
    LocalCallError,
    PeerEnding,
    decide_answer,
    format_end_reason,
    parse_end_reason,
)
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    CallEnd,
    CallStart,
    Caption,
    CodecFrames,
    CodecSettings,
    Hello,
    Message,
    Ping,
    VoiceTraits,
)

CALL_ID = 4242


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def start_message(call_id: int = CALL_ID, speaker: str = "en", listener: str = "pt") -> CallStart:
    return CallStart(
        call_id=call_id,
        speaker_language=speaker,
        listener_language=listener,
        codec=CodecSettings(
            architecture_id="conv-v1",
            codec_version_hash=b"\x01" * 32,
            latent_dim=16,
            latent_bits=6,
            frame_rate_hz=50.0,
        ),
        voice=VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5),
    )


def frames(seq: int) -> CodecFrames:
    return CodecFrames(seq=seq, start_time_s=seq * 0.1, frame_count=5, payload=b"\x00" * 10)


def caption(seq: int, text: str = "hello", language: str = "en") -> Caption:
    return Caption(
        seq=seq,
        start_s=0.0,
        end_s=1.0,
        text=text,
        language=language,
        final=True,
        words=(),
        voice=VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5),
    )


def deliver(sender: CallProtocol, receiver: CallProtocol) -> list[CallEvent]:
    """Everything ``sender`` queued, received by ``receiver``, in order."""
    events: list[CallEvent] = []
    for message in sender.messages_to_send():
        events += receiver.receive_message(message)
    return events


def make_pair(
    *,
    policy: AnswerPolicy = AnswerPolicy.TRUSTED,
    trusted: bool = True,
    timeouts: CallTimeouts | None = None,
) -> tuple[CallProtocol, CallProtocol, FakeClock]:
    clock = FakeClock()
    caller = CallProtocol(role=CallRole.CALLER, clock=clock, timeouts=timeouts)
    callee = CallProtocol(
        role=CallRole.CALLEE,
        clock=clock,
        answer_policy=policy,
        caller_trusted=trusted,
        timeouts=timeouts,
    )
    return caller, callee, clock


def answered_pair() -> tuple[CallProtocol, CallProtocol, FakeClock]:
    caller, callee, clock = make_pair()
    caller.place(start_message())
    [incoming] = deliver(caller, callee)
    assert isinstance(incoming, IncomingCall)
    callee.answer(start_message(speaker="pt", listener="en"))
    assert isinstance(deliver(callee, caller)[0], CallAnswered)
    return caller, callee, clock


def ended(events: list[CallEvent]) -> CallEnded:
    [end] = [e for e in events if isinstance(e, CallEnded)]
    return end


def test_symmetric_call_both_sides_send_media_and_end_cleanly() -> None:
    caller, callee, clock = make_pair()
    caller.place(start_message())
    assert caller.state is CallState.RINGING
    [incoming] = deliver(caller, callee)
    assert incoming == IncomingCall(start_message(), AnswerDecision.ANSWER)
    assert callee.state is CallState.RINGING
    clock.now += 0.5
    callee.answer(start_message(speaker="pt", listener="en"))
    [answered] = deliver(callee, caller)
    assert isinstance(answered, CallAnswered)
    assert answered.their_start.speaker_language == "pt"
    assert caller.state is callee.state is CallState.ANSWERED

    # Both directions at once: each side's own user's audio, and captions of what it heard.
    for seq in range(3):
        caller.send_frames(frames(seq))
        callee.send_frames(frames(seq))
    assert caller.state is callee.state is CallState.IN_CALL
    assert deliver(caller, callee) == [FramesReceived(frames(s)) for s in range(3)]
    assert deliver(callee, caller) == [FramesReceived(frames(s)) for s in range(3)]
    callee.send_caption(caption(0, "hello", "en"))
    caller.send_caption(caption(0, "olá", "pt"))
    assert deliver(callee, caller) == [CaptionReceived(caption(0, "hello", "en"))]
    assert deliver(caller, callee) == [CaptionReceived(caption(0, "olá", "pt"))]

    clock.now += 10.0
    assert caller.hang_up(summary_json='{"side": "caller"}') == []
    assert caller.state is CallState.ENDING
    [peer_ending] = deliver(caller, callee)
    assert peer_ending == PeerEnding(CallEndReason.HANGUP, "")
    # The callee flushes its listener (final captions still go out), then ends.
    callee.send_caption(caption(1, "bye", "en"))
    callee_end = ended(callee.hang_up(CallEndReason.COMPLETED, summary_json='{"side": "callee"}'))
    caller_events = deliver(callee, caller)
    assert isinstance(caller_events[0], CaptionReceived)
    caller_end = ended(caller_events)
    assert caller.state is callee.state is CallState.ENDED

    assert caller_end.summary.reason is CallEndReason.HANGUP
    assert caller_end.summary.ended_by_us
    assert caller_end.summary.their_summary_json == '{"side": "callee"}'
    assert caller_end.summary.ring_s == pytest.approx(0.5)
    assert caller_end.summary.duration_s == pytest.approx(10.0)
    assert (caller_end.summary.frames_sent, caller_end.summary.frames_received) == (3, 3)
    assert caller_end.summary.captions_received == 2
    assert callee_end.summary.reason is CallEndReason.HANGUP
    assert not callee_end.summary.ended_by_us
    assert callee_end.summary.their_summary_json == '{"side": "caller"}'
    assert caller.next_deadline() is None and callee.next_deadline() is None


def test_frames_in_flight_after_our_hangup_are_still_received() -> None:
    caller, callee, _ = answered_pair()
    callee.send_frames(frames(0))
    caller.hang_up()
    assert deliver(callee, caller) == [FramesReceived(frames(0))]
    assert caller.state is CallState.ENDING


def test_ask_policy_rings_and_the_callee_times_out_as_no_answer() -> None:
    caller, callee, clock = make_pair(
        policy=AnswerPolicy.ASK, timeouts=CallTimeouts(ring_s=20.0, end_s=5.0)
    )
    caller.place(start_message())
    [incoming] = deliver(caller, callee)
    assert isinstance(incoming, IncomingCall) and incoming.decision is AnswerDecision.RING
    assert callee.next_deadline() == pytest.approx(clock.now + 20.0)
    clock.now += 19.9
    assert callee.tick() == []
    clock.now += 0.2
    callee_end = ended(callee.tick())
    assert callee_end.summary.reason is CallEndReason.NO_ANSWER
    caller_end = ended(deliver(callee, caller))
    assert caller_end.summary.reason is CallEndReason.NO_ANSWER
    assert not caller_end.summary.ended_by_us and not caller_end.summary.answered


def test_the_caller_times_out_a_ring_on_its_own_clock() -> None:
    caller, callee, clock = make_pair(policy=AnswerPolicy.ASK, timeouts=CallTimeouts(ring_s=5.0))
    caller.place(start_message())
    deliver(caller, callee)
    clock.now += 5.0
    assert ended(caller.tick()).summary.reason is CallEndReason.NO_ANSWER
    [end] = caller.messages_to_send()
    assert isinstance(end, CallEnd) and end.reason.startswith("no_answer")
    assert ended(callee.receive_message(end)).summary.reason is CallEndReason.NO_ANSWER


def test_the_user_answers_a_ringing_call() -> None:
    caller, callee, _ = make_pair(policy=AnswerPolicy.ASK)
    caller.place(start_message())
    deliver(caller, callee)
    callee.answer(start_message(speaker="pt"))
    assert isinstance(deliver(callee, caller)[0], CallAnswered)


def test_never_policy_declines_with_a_reason() -> None:
    caller, callee, _ = make_pair(policy=AnswerPolicy.NEVER)
    caller.place(start_message())
    events = deliver(caller, callee)
    assert isinstance(events[0], IncomingCall) and events[0].decision is AnswerDecision.DECLINE
    assert ended(events).summary.reason is CallEndReason.DECLINED
    caller_end = ended(deliver(callee, caller))
    assert caller_end.summary.reason is CallEndReason.DECLINED
    assert "call.answer = never" in caller_end.summary.detail


def test_the_shell_declines_a_busy_call() -> None:
    caller, callee, _ = make_pair()
    caller.place(start_message())
    deliver(caller, callee)
    callee.decline(CallEndReason.BUSY, "this node already serves 8 calls, its limit")
    summary = ended(deliver(callee, caller)).summary
    assert (summary.reason, summary.detail) == (
        CallEndReason.BUSY,
        "this node already serves 8 calls, its limit",
    )


def test_the_call_ends_at_its_longest_duration() -> None:
    caller, callee, clock = answered_pair()
    clock.now += 3600.0
    assert ended(callee.tick()).summary.reason is CallEndReason.MAX_DURATION
    events = deliver(callee, caller)
    assert events == [
        PeerEnding(CallEndReason.MAX_DURATION, "the call reached this node's longest call (3600 s)")
    ]
    ended(caller.hang_up(CallEndReason.COMPLETED))
    assert caller.summary is not None and caller.summary.reason is CallEndReason.MAX_DURATION


def test_a_peer_that_never_sends_its_call_end_is_timed_out() -> None:
    caller, _callee, clock = answered_pair()
    caller.hang_up()
    [our_end] = caller.messages_to_send()
    assert isinstance(our_end, CallEnd)
    assert caller.next_deadline() == pytest.approx(clock.now + 120.0)
    clock.now += 119.0
    assert caller.tick() == []
    clock.now += 1.0
    summary = ended(caller.tick()).summary
    assert summary.reason is CallEndReason.END_TIMEOUT and summary.ended_by_us
    assert caller.messages_to_send() == []  # no second CallEnd


@pytest.mark.parametrize(
    ("message", "what"),
    [
        (frames(0), "CodecFrames while ringing"),
        (caption(0), "Caption while ringing"),
        (start_message(call_id=7), "CallStart while ringing"),
        # RoundOffer was the example here until issue 12 retired it from the wire.
        (
            Hello(
                protocol_version=2, capabilities=(), codec_architecture="x", codec_version_hash=b""
            ),
            "Hello",
        ),
        (CallEnd(call_id=99, reason="completed"), "CallEnd for call 99"),
    ],
)
def test_out_of_place_message_at_the_callee_ends_the_call(message: Message, what: str) -> None:
    caller, callee, _ = make_pair(policy=AnswerPolicy.ASK)
    caller.place(start_message())
    deliver(caller, callee)
    summary = ended(callee.receive_message(message)).summary
    assert summary.reason is CallEndReason.PROTOCOL_ERROR
    assert what in summary.detail
    [end] = callee.messages_to_send()
    assert isinstance(end, CallEnd) and end.call_id == CALL_ID
    assert parse_end_reason(end.reason) == (CallEndReason.PROTOCOL_ERROR, summary.detail)
    # The caller learns why; later messages are counted and dropped, never raise.
    assert ended(caller.receive_message(end)).summary.reason is CallEndReason.PROTOCOL_ERROR
    assert callee.receive_message(frames(1)) == []
    assert callee.late_messages == 1


def test_frames_after_their_call_end_are_a_violation() -> None:
    caller, callee, _ = answered_pair()
    caller.hang_up()
    deliver(caller, callee)
    summary = ended(callee.receive_message(frames(5))).summary
    assert summary.reason is CallEndReason.PROTOCOL_ERROR
    assert "after its CallEnd" in summary.detail


def test_a_call_message_before_any_call_ends_with_a_reason() -> None:
    callee = CallProtocol(role=CallRole.CALLEE, clock=FakeClock())
    summary = ended(callee.receive_message(frames(0))).summary
    assert summary.reason is CallEndReason.PROTOCOL_ERROR
    [end] = callee.messages_to_send()
    assert isinstance(end, CallEnd) and end.reason.startswith("protocol_error: CodecFrames")


def test_bye_and_broken_session_end_the_call_without_sending() -> None:
    caller, callee, _ = answered_pair()
    summary = ended(caller.receive_message(Bye(ByeReason.SHUTDOWN))).summary
    assert summary.reason is CallEndReason.PEER_LEFT and summary.detail == "SHUTDOWN"
    assert caller.messages_to_send() == []
    assert ended(callee.session_broken()).summary.reason is CallEndReason.SESSION_BROKEN
    assert callee.messages_to_send() == []


def test_pings_are_not_the_calls_business() -> None:
    caller, _, _ = answered_pair()
    assert caller.receive_message(Ping(1)) == []
    assert caller.state is CallState.ANSWERED


def test_local_misuse_moves_to_error_and_every_later_call_refuses() -> None:
    caller, _, _ = make_pair()
    caller.place(start_message())
    with pytest.raises(LocalCallError, match="cannot media frames while ringing"):
        caller.send_frames(frames(0))
    assert caller.state is CallState.ERROR
    with pytest.raises(LocalCallError, match="broken"):
        caller.receive_message(start_message())
    with pytest.raises(LocalCallError):
        caller.tick()


def test_callee_cannot_place_and_caller_cannot_answer() -> None:
    _, callee, _ = make_pair()
    with pytest.raises(LocalCallError):
        callee.place(start_message())
    caller, _, _ = make_pair()
    with pytest.raises(LocalCallError):
        caller.answer(start_message())


def test_an_answer_for_another_call_is_a_local_error() -> None:
    caller, callee, _ = make_pair()
    caller.place(start_message())
    deliver(caller, callee)
    with pytest.raises(LocalCallError, match="answer names call 1"):
        callee.answer(start_message(call_id=1))


def test_no_frames_after_our_own_call_end() -> None:
    caller, _, _ = answered_pair()
    caller.hang_up()
    with pytest.raises(LocalCallError, match="follow our CallEnd"):
        caller.send_frames(frames(9))


@pytest.mark.parametrize(
    ("policy", "trusted", "decision"),
    [
        (AnswerPolicy.TRUSTED, True, AnswerDecision.ANSWER),
        (AnswerPolicy.TRUSTED, False, AnswerDecision.RING),
        (AnswerPolicy.ASK, True, AnswerDecision.RING),
        (AnswerPolicy.ASK, False, AnswerDecision.RING),
        (AnswerPolicy.NEVER, True, AnswerDecision.DECLINE),
        (AnswerPolicy.NEVER, False, AnswerDecision.DECLINE),
    ],
)
def test_answer_policy(policy: AnswerPolicy, trusted: bool, decision: AnswerDecision) -> None:
    assert decide_answer(policy, caller_trusted=trusted) is decision


@pytest.mark.parametrize("reason", list(CallEndReason))
def test_end_reasons_round_trip(reason: CallEndReason) -> None:
    assert parse_end_reason(format_end_reason(reason)) == (reason, "")
    assert parse_end_reason(format_end_reason(reason, "why\nnot")) == (reason, "why not")


def _record(trust: TrustState, source: PeerSource) -> PeerRecord:
    return PeerRecord(
        public_key=b"\x02" * 32,
        name=None,
        trust=trust,
        source=source,
        addresses=(),
        first_seen=0.0,
        last_seen=0.0,
        last_handshake=None,
    )


def test_todays_free_text_reasons_map_to_typed_reasons() -> None:
    """The strings today's nodes write (taken from the functions that write them)."""
    not_trusted = call_refusal("trusted", None)
    blocked = call_refusal("anyone", _record(TrustState.BLOCKED, PeerSource.STATIC))
    limits = PeerCallLimits(max_concurrent_per_peer=1, max_per_hour=20, clock=lambda: 0.0)
    limits.start(b"\x03" * 32)
    busy = limits.refusal(b"\x03" * 32)
    assert not_trusted is not None and blocked is not None and busy is not None
    cases = {
        "completed": CallEndReason.COMPLETED,
        "hangup": CallEndReason.HANGUP,
        not_trusted: CallEndReason.NOT_TRUSTED,
        blocked: CallEndReason.NOT_TRUSTED,
        busy: CallEndReason.BUSY,
        "busy: this node already serves 8 calls, its limit": CallEndReason.BUSY,
        "no codec bundle in the handshake: the caller must trust this node to call it": (
            CallEndReason.CODEC
        ),
        "codec version mismatch: CallStart names a codec other than the bundle sent": (
            CallEndReason.CODEC
        ),
        "unusable codec: latent_bits 9 is not 1..8": CallEndReason.CODEC,
        "the call reached this node's longest call (3600 s)": CallEndReason.MAX_DURATION,
        "listener failure: disk full: /x": CallEndReason.FAILURE,
        "cannot load the call's models: RuntimeError: x": CallEndReason.FAILURE,
        "'xx' is not a language tag": CallEndReason.REFUSED,
        "": CallEndReason.REFUSED,
    }
    for text, expected in cases.items():
        assert parse_end_reason(text)[0] is expected, text


def test_timeouts_are_validated() -> None:
    with pytest.raises(ValueError, match="ring_s"):
        CallTimeouts(ring_s=0.0)
    with pytest.raises(ValueError, match="end_s"):
        CallTimeouts(end_s=float("nan"))


# -- Hypothesis: whatever the peer sends, only typed outcomes ---------------------------------

_voice = VoiceTraits(median_pitch_hz=100.0, speaking_rate_wps=2.0)
_peer_messages = st.one_of(
    st.builds(start_message, call_id=st.sampled_from([CALL_ID, 1, 0])),
    st.builds(frames, st.integers(0, 5)),
    st.builds(caption, st.integers(0, 5)),
    st.builds(
        CallEnd,
        call_id=st.sampled_from([CALL_ID, 1]),
        reason=st.one_of(st.text(max_size=30), st.sampled_from([r.value for r in CallEndReason])),
        summary_json=st.text(max_size=10),
    ),
    st.builds(Bye, st.sampled_from(list(ByeReason))),
    st.builds(Ping, st.integers(0, 9)),
    st.just(
        Hello(
            protocol_version=PROTOCOL_VERSION,
            capabilities=(),
            codec_architecture="x",
            codec_version_hash=b"",
        )
    ),
)
_steps = st.lists(
    st.one_of(
        _peer_messages.map(lambda m: ("message", m)),
        st.floats(0.0, 50.0).map(lambda dt: ("tick", dt)),
        st.sampled_from(["answer", "frames", "caption", "hang_up", "broken"]).map(
            lambda verb: ("verb", verb)
        ),
    ),
    max_size=25,
)
_EVENTS = (IncomingCall, CallAnswered, FramesReceived, CaptionReceived, PeerEnding, CallEnded)


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(list(CallRole)),
    policy=st.sampled_from(list(AnswerPolicy)),
    steps=_steps,
)
def test_any_message_sequence_gives_only_typed_outcomes(
    role: CallRole, policy: AnswerPolicy, steps: list[tuple[str, object]]
) -> None:
    clock = FakeClock()
    machine = CallProtocol(
        role=role,
        clock=clock,
        answer_policy=policy,
        caller_trusted=True,
        timeouts=CallTimeouts(ring_s=30.0, end_s=20.0, max_duration_s=100.0),
    )
    if role is CallRole.CALLER:
        machine.place(start_message())
    ended_events = 0
    sent_ends = 0
    for kind, value in steps:
        events: list[CallEvent] = []
        if kind == "message":
            assert isinstance(value, (CallStart, CodecFrames, Caption, CallEnd, Bye, Ping, Hello))
            events = machine.receive_message(value)
        elif kind == "tick":
            assert isinstance(value, float)
            clock.now += value
            events = machine.tick()
        else:
            # A well-behaved shell: only the verbs the current state allows.
            state = machine.state
            if value == "answer" and role is CallRole.CALLEE and state is CallState.RINGING:
                machine.answer(start_message(call_id=machine.call_id or 0))
            elif value in ("frames", "caption") and state in (
                CallState.ANSWERED,
                CallState.IN_CALL,
            ):
                if value == "frames":
                    machine.send_frames(frames(0))
                else:
                    machine.send_caption(caption(0))
            elif value == "hang_up" and (
                state in (CallState.ANSWERED, CallState.IN_CALL)
                or (state is CallState.RINGING and role is CallRole.CALLER)
            ):
                events = machine.hang_up()
            elif value == "broken":
                events = machine.session_broken()
        assert all(isinstance(event, _EVENTS) for event in events)
        ended_events += sum(isinstance(event, CallEnded) for event in events)
        sent_ends += sum(isinstance(m, CallEnd) for m in machine.messages_to_send())
        assert machine.state is not CallState.ERROR
        if machine.state is CallState.ENDED:
            assert machine.next_deadline() is None
    assert ended_events <= 1
    assert sent_ends <= 1
    if ended_events:
        assert machine.state is CallState.ENDED and machine.summary is not None
