"""Placing a call: dialing the callee, then holding the call from the caller's side.

Theory of operation (docs/design.md, "Calls")
----------------------------------
A call rides on an ordinary session (Noise XK, :mod:`handshake.stream`). The caller must trust
the callee, because the callee decodes our frames with *our* codec, and our bundle only travels
in handshake message 3 to peers we trust; the callee's bundle comes back in its first transport
message only if the callee trusts us too, and then the call is two-way.

1. dial the callee (:func:`dial_peer`), handshake with our bundle in message 3;
2. :func:`place_call`: our ``CallStart`` (languages, our codec settings, our voice traits) rings
   the callee (:class:`media.call_protocol.CallProtocol`, caller role); the callee answers with
   its own ``CallStart`` (its codec, voice, language);
3. both sides stream ``CodecFrames`` of their own user's audio at real time (a file paced at
   real time, ``pace`` > 1 plays faster for tests; or a microphone) and each runs the listener
   pipeline for the other's frames (:mod:`daemon.call_listener`), sending the captions it makes
   of the other's speech back; the shell is :func:`daemon.call_session.run_call`;
4. when our file is done (or the user hangs up) our ``CallEnd`` goes out; the callee's comes
   back with its listener summary (``summary_json``: per-stage latency percentiles, counts).
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import trio

from codec.errors import InvalidBundleError
from codec.model import CodecModel
from daemon.call_errors import CallError, CallRefusedError
from daemon.call_listener import ListenerRun, load_listener, open_listener
from daemon.call_models import CallModels
from daemon.call_session import AudioSource, CallResult, FileSource, run_call
from daemon.call_view import CallerCaptions
from daemon.logs import get_logger
from handshake.noise import StaticIdentity
from handshake.stream import SessionStream, StreamSettings, initiate_session
from media.asr import FeatureTranscriber
from media.call_protocol import (
    CallEndReason,
    CallProtocol,
    CallRole,
    CallSummary,
    CallTimeouts,
)
from media.call_receiver import (
    CallLimitError,
    CallLimits,
    parse_wire_summary,
    summary_for_wire,
)
from media.call_sender import DTX_CAPABILITY, CallSender, codec_settings
from media.errors import MediaError
from media.features import SAMPLE_RATE, log_mel
from media.latency import LatencyStats
from media.sender_vad import SenderVadError, SileroStreamingVad, load_silero_session
from media.streaming_asr import StreamingSettings
from media.translate import language_key
from media.voice import measure_voice_traits
from schemas.messages import CallStart, Caption, Hello, VoiceTraits, WeightsBundle

if TYPE_CHECKING:
    from daemon.call_audio import Playout

__all__ = [
    "CALL_END_TIMEOUT_S",
    "CallOutcome",
    "CallRequest",
    "ListenSettings",
    "dial_peer",
    "measure_voice",
    "place_call",
    "sender_vad",
]

log = get_logger("calls")

#: The caller waits this long after its ``CallEnd`` for the callee's final captions and summary.
CALL_END_TIMEOUT_S: Final = 120.0
#: Voice traits are measured on at most this much of the caller's audio.
VOICE_SAMPLE_S: Final = 12.0
#: Dialing one address gives up after this long.
DIAL_TIMEOUT_S: Final = 5.0
#: A call nobody answers ends after this long (the callee's ring timeout is its own).
DEFAULT_RING_S: Final = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    """What the caller asks for."""

    speaker_language: str
    listener_language: str
    batch_ms: int = 100
    #: 1.0 plays the audio in real time; tests may go faster (the callee allows up to 1.5x).
    pace: float = 1.0

    def __post_init__(self) -> None:
        language_key(self.speaker_language)
        language_key(self.listener_language)
        if not 10 <= self.batch_ms <= 1000:
            raise ValueError(f"batch_ms must be in [10, 1000], got {self.batch_ms}")
        if not (math.isfinite(self.pace) and 0.1 <= self.pace <= 1.5):
            raise ValueError(f"pace must be in [0.1, 1.5], got {self.pace}")


@dataclass(slots=True)
class CallOutcome:
    """What the caller ends up with."""

    call_id: int
    #: The callee's ``CallEnd.reason`` as sent (``"completed"`` for a normal end).
    reason: str
    completed: bool
    callee_summary: dict[str, object] | None
    encode_latency: LatencyStats
    audio_s: float
    frames_sent: int
    paced: float
    #: The call as the machine saw it (typed end reason, who ended it, counts).
    summary: CallSummary | None = None
    #: Two-way calls: our listener's figures for the callee's speech (None: one-way).
    listener_summary: dict[str, object] | None = None
    #: Files our listener wrote (captions of their speech in both languages, their speech).
    listener_files: list[Path] = field(default_factory=list)
    #: Why we did not listen to the callee (no bundle, a model missing), "" when we did.
    not_listening: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenSettings:
    """What the caller needs to hear the callee (two-way calls): our models and a folder."""

    models: CallModels
    call_dir: Path
    limits: CallLimits = field(default_factory=CallLimits)
    streaming: StreamingSettings | None = None
    #: Told of the captions we make of the callee's speech (a live view).
    on_captions: Callable[[Sequence[Caption]], None] | None = None
    #: Where the callee's translated speech plays (None: only the call's WAV).
    playout: Playout | None = None
    #: The node's one Whisper worker, shared with the calls it answers (None: this call's own).
    recognizer: trio.CapacityLimiter | None = None
    #: The node's one synthesis worker, likewise; and how late speech may still be spoken.
    speech: trio.CapacityLimiter | None = None
    max_speech_delay_s: float | None = None


def measure_voice(audio: npt.ArrayLike, transcriber: FeatureTranscriber) -> VoiceTraits:
    """Our voice traits from the first :data:`VOICE_SAMPLE_S` of ``audio`` (16 kHz).

    The speaking rate needs a word count, hence Whisper. Raises :class:`CallError` when the
    sample holds no speech.
    """
    samples = np.asarray(audio, dtype=np.float32)[: round(VOICE_SAMPLE_S * SAMPLE_RATE)]
    features = log_mel(samples)
    try:
        words = len(transcriber.transcribe_features(features).words)
        return measure_voice_traits(features, word_count=max(1, words))
    except MediaError as error:
        raise CallError(f"cannot measure the voice in the input: {error}") from error


async def dial_peer(
    *,
    identity: StaticIdentity,
    public_key: bytes,
    addresses: Sequence[tuple[str, int]],
    hello: Hello,
    bundle: WeightsBundle,
    settings: StreamSettings | None = None,
) -> SessionStream:
    """Connect to the first address that answers and run the handshake (our bundle in msg 3)."""
    if not addresses:
        raise CallError("unreachable: no known address for this peer")
    failures: list[str] = []
    for host, port in addresses:
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as error:
            failures.append(f"{host}:{port}: {error or 'timed out'}")
            continue
        try:
            return await initiate_session(
                tcp,
                identity=identity,
                responder_static_public=public_key,
                our_hello=hello,
                our_bundle=bundle,
                settings=settings,
            )
        except trio.BrokenResourceError as error:
            cause: BaseException = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if (host, port) == tuple(addresses[-1]):
                raise CallError(f"handshake failed with {host}:{port}: {cause}") from error
            failures.append(f"{host}:{port}: handshake failed: {cause}")  # try the next one
    raise CallError("unreachable: " + "; ".join(failures))


@functools.cache
def _silero_session() -> object:
    # One ONNX session for every call of this process: the VAD's state travels in its inputs.
    return load_silero_session()


def sender_vad() -> SileroStreamingVad | None:
    """The caller's own VAD marks speech start/end in its frames (advisory, issue 16)."""
    try:
        return SileroStreamingVad(_silero_session())
    except SenderVadError as error:
        log.warning("calls go without speech marks: %s", error)
        return None


async def place_call(
    session: SessionStream,
    *,
    model: CodecModel,
    version_hash: bytes,
    audio: npt.ArrayLike | None,
    voice: VoiceTraits,
    request: CallRequest,
    captions: CallerCaptions,
    call_id: int | None = None,
    listen: ListenSettings | None = None,
    source: AudioSource | None = None,
    hang_up: trio.Event | None = None,
    ring_timeout_s: float = DEFAULT_RING_S,
    protocol: CallProtocol | None = None,
) -> CallOutcome:
    """Hold a call over an established session (module docstring, steps 2-4).

    Our audio is ``audio`` played at real time or ``source``; the call ends when a recording
    is done, or on ``hang_up``. ``protocol``: a fresh caller machine the shell's registry
    watches (one is made otherwise). With ``listen`` and the callee's bundle we
    also hear the callee. Raises :class:`CallRefusedError` if the callee ends or refuses the
    call, and :class:`CallError` if the session breaks or the callee breaks a limit.
    """
    call_id = call_id if call_id is not None else secrets.randbits(62)
    if source is None:
        if audio is None:
            raise ValueError("place_call needs audio or a source")
        source = FileSource(audio, batch_ms=request.batch_ms, pace=request.pace)
    ends_with_source = isinstance(source, FileSource)
    # Discontinuous transmission only to a listener that says it understands it.
    dtx = DTX_CAPABILITY in session.their_hello.capabilities
    sender = CallSender(model, vad=sender_vad() if dtx else None)
    start = CallStart(
        call_id=call_id,
        speaker_language=request.speaker_language,
        listener_language=request.listener_language,
        codec=codec_settings(model, version_hash),
        voice=voice,
    )
    if protocol is None:
        protocol = CallProtocol(
            role=CallRole.CALLER,
            clock=time.monotonic,
            timeouts=CallTimeouts(ring_s=ring_timeout_s, end_s=CALL_END_TIMEOUT_S),
        )
    protocol.place(start)
    not_listening: list[str] = []

    async def make_listener(their_start: CallStart, answered_at: float) -> ListenerRun | None:
        if listen is None:
            return None
        bundle = session.their_bundle
        if bundle is None:
            not_listening.append("the callee sent no codec (it does not trust us)")
            return None
        try:
            loaded = await trio.to_thread.run_sync(
                load_listener, listen.models, their_start, bundle
            )
            playout = listen.playout
            if playout is not None:
                playout.clock_offset_s = answered_at
            return open_listener(
                their_start,
                loaded,
                call_dir=listen.call_dir,
                limits=listen.limits,
                streaming=(
                    listen.streaming if listen.streaming is not None else listen.models.streaming
                ),
                clock=lambda: time.monotonic() - answered_at,
                on_speech=playout.play if playout is not None else None,
                recognizer=listen.recognizer,
                speech=listen.speech,
                max_speech_delay_s=listen.max_speech_delay_s,
            )
        except (CallLimitError, MediaError, InvalidBundleError, OSError) as error:
            not_listening.append(str(error))
            log.warning("not listening to the callee: %s", error)
            return None

    def wire_summary(listener: ListenerRun | None) -> str:
        if listener is None:
            return ""
        return summary_for_wire(_listener_summary(listener, call_id=call_id))

    result = await run_call(
        session,
        protocol,
        sender=sender,
        source=source,
        hang_up_when_source_ends=ends_with_source,
        make_listener=make_listener,
        on_caption=captions.receive,
        on_listener_captions=listen.on_captions if listen is not None else None,
        wire_summary=wire_summary,
        hang_up=hang_up,
    )
    return _outcome(result, request=request, not_listening=not_listening)


def _listener_summary(listener: ListenerRun, *, call_id: int) -> dict[str, object]:
    intake = listener.intake
    return listener.pipeline.summary(
        call_id=call_id,
        frames={
            "messages": intake.messages,
            "frames": intake.frames,
            "keepalives": intake.keepalives,
            "bytes": intake.bytes,
        },
        failures=list(listener.failures),
    )


def _outcome(result: CallResult, *, request: CallRequest, not_listening: list[str]) -> CallOutcome:
    summary = result.summary
    if result.listener is not None:
        result.listener.pipeline.close()
    if result.violation is not None:
        raise CallError(f"the callee broke a call limit: {result.violation}")
    reason = summary.reason
    if reason is CallEndReason.SESSION_BROKEN:
        raise CallError("the session broke")
    if reason is CallEndReason.PEER_LEFT:
        raise CallError("the callee hung up without ending the call")
    if reason is CallEndReason.END_TIMEOUT:
        raise CallError(f"the callee sent no CallEnd within {CALL_END_TIMEOUT_S:.0f} s")
    if summary.ended_by_us and reason is CallEndReason.PROTOCOL_ERROR:
        raise CallError(f"the callee broke the call protocol: {summary.detail}")
    if not summary.ended_by_us and reason not in (CallEndReason.HANGUP, CallEndReason.COMPLETED):
        raise CallRefusedError(f"the callee ended the call: {summary.detail or reason.value}")
    their = summary.their_reason
    if summary.ended_by_us and their not in (CallEndReason.COMPLETED, CallEndReason.HANGUP):
        detail = their.value if their is not None else "no reason"
        raise CallRefusedError(f"the callee ended the call: {detail}")
    sender = result.sender
    assert sender is not None
    listener = result.listener
    return CallOutcome(
        call_id=summary.call_id,
        reason=(their or reason).value,
        completed=summary.ended_by_us,
        callee_summary=parse_wire_summary(summary.their_summary_json),
        encode_latency=sender.latency,
        audio_s=sender.audio_s_sent,
        frames_sent=sender.frames_sent,
        paced=request.pace,
        summary=summary,
        listener_summary=(
            _listener_summary(listener, call_id=summary.call_id) if listener is not None else None
        ),
        listener_files=listener.pipeline.files if listener is not None else [],
        not_listening="; ".join(not_listening),
    )
