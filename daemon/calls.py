"""Calls on the node: the service that answers them, shared by both roles' shells.

Theory of operation (docs/design.md, "Calls")
---------------------------------------------
Calls are symmetric (issue 14): the caller rings with its ``CallStart``; this node, the callee,
checks it, answers with its own ``CallStart`` (our codec, voice and language), and from then on
both sides send their own user's audio as ``CodecFrames`` on the one session and each runs the
listener pipeline for the other's frames (:mod:`daemon.call_listener`), sending back the
captions it makes. The call's logic is the sans-IO :class:`media.call_protocol.CallProtocol`;
:func:`daemon.call_session.run_call` moves its messages and audio; placing a call is
:mod:`daemon.call_dialing`; the models are :mod:`daemon.call_models`.

The callee (:func:`make_call_handler`, the node's session handler; between calls it behaves
like ``serve_idle_session``: answers ``Ping``, ends on ``Bye`` or idleness):

1. ``CallStart`` is checked: ``trust.calls_from`` against the caller's trust *now* (read again
   from the trust list for every ``CallStart``, so an untrust or a block reaches open sessions;
   :func:`daemon.trust_policy.call_refusal`), the per-peer limits and admission by measured
   recognizer load (:mod:`daemon.call_admission`), the codec settings against the bundle the
   caller sent in the handshake, a translation route and models for the languages. A refusal is
   a ``CallEnd`` whose reason is one line saying why (parsed into a typed
   :class:`~media.call_protocol.CallEndReason` by the caller); the session stays open.
2. ``call.answer`` decides (:func:`media.call_protocol.decide_answer`): answer now (trusted
   callers, by default), ring (``ask``: the call shows in ``parley calls`` / ``parley status``
   until ``parley answer ID`` or ``parley hangup ID``, or the ring timeout), or decline.
3. Our answer carries our codec and voice; our audio (config ``call.input``) is sent only when
   the caller holds our bundle (we trusted it in the handshake), otherwise we only listen.
4. Files go to ``<home>/calls/<call id>/``: ``call.<lang>.vtt/.srt`` (the caller's speech in
   both languages), ``received.<lang>.wav`` (its translated speech), ``ours.<lang>.vtt/.srt``
   (the captions the caller made of our speech), and ``summary.json`` at the end (the typed
   end reason, who ended it, our listener's figures).
5. A limit broken by the caller ends the call with a ``CallEnd`` naming it, counts it in the
   connection stats (``call_<code>``) and closes the session.

Several calls at once (``call.max_concurrent``); they share the models, and each call's
recognizer decodes whatever audio arrived since its previous decode, so load makes captions
later rather than piling up work. Clock: latencies are measured on each listener's clock from
the arrival of the speaker's ``CallStart``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import trio

from codec.config import CodecConfig
from codec.errors import InvalidBundleError
from codec.model import CodecModel, new_model
from common.atomic import write_atomic
from daemon.call_admission import PeerCallLimits, RecognizerLoad
from daemon.call_dialing import (
    CALL_END_TIMEOUT_S,
    DIAL_TIMEOUT_S,
    VOICE_SAMPLE_S,
    CallOutcome,
    CallRequest,
    ListenSettings,
    dial_peer,
    measure_voice,
    place_call,
    sender_vad,
)
from daemon.call_errors import CallError, CallRefusedError
from daemon.call_listener import MAX_QUEUED_MESSAGES, ListenerRun, load_listener, open_listener
from daemon.call_models import CallModels
from daemon.call_registry import LiveCall, LiveCalls
from daemon.call_session import OurMedia, run_call
from daemon.call_view import CallerCaptions
from daemon.connections import SessionHandler, SessionInfo
from daemon.database import PeerRecord
from daemon.logs import event, get_logger
from daemon.peers import short_peer_id
from daemon.trust_policy import call_refusal
from handshake.handshake import TrustDecision
from handshake.stream import SessionStream
from media.call_protocol import (
    AnswerDecision,
    AnswerPolicy,
    CallEndReason,
    CallProtocol,
    CallRole,
    CallState,
    CallSummary,
    CallTimeouts,
    IncomingCall,
    decide_answer,
    format_end_reason,
    parse_end_reason,
)
from media.call_receiver import CallLimitError, CallLimits, summary_for_wire
from media.call_sender import CallSender, codec_settings
from media.errors import MediaError
from media.streaming_asr import StreamingSettings
from media.translate import language_key
from schemas.messages import Bye, CallEnd, CallStart, Caption, Ping, Pong, VoiceTraits

if TYPE_CHECKING:
    from daemon.call_node import CallNode

log = get_logger("calls")

CALLS_DIR: Final = "calls"
#: Finished calls remembered in memory (their files stay on disk).
MAX_CALL_HISTORY: Final = 100
#: Our voice when we send no audio or cannot measure it (out of range: the peer's default voice).
NO_VOICE: Final = VoiceTraits(median_pitch_hz=0.0, speaking_rate_wps=0.0)

#: How often a ringing call checks for an answer.
RING_POLL_S: Final = 0.2

#: Our side of a call answered for ``start``: (their CallStart, whether they hold our codec,
#: the live call for the input level) -> our media.
OurMediaFactory = Callable[[CallStart, bool, LiveCall], Awaitable[OurMedia]]


@dataclass(slots=True)
class CallRecord:
    """One finished (or refused) call, for the status and tests."""

    call_id: int
    peer: str
    call_dir: Path | None
    #: The reason as sent on the wire (a refusal's line, or our CallEnd's ``reason``).
    reason: str
    #: Our listener's figures (what ``summary.json`` holds), None for a refused call.
    summary: dict[str, object] | None
    #: Why it ended, typed; ``COMPLETED`` when it was answered and ended by a hang-up.
    end_reason: CallEndReason = CallEndReason.COMPLETED
    detail: str = ""
    #: The call as the machine saw it (None for a call refused before ringing).
    call: CallSummary | None = None


class CallObserver(Protocol):
    """Told what the listener's calls do (the web page's live captions); called on the event
    loop, so it must not block. ``call_key`` is the call's folder name, unique per call."""

    def call_started(self, call_key: str, peer: str, start: CallStart) -> None: ...

    def captions(self, call_key: str, captions: Sequence[Caption], now_s: float) -> None: ...

    def call_ended(self, call_key: str, reason: str) -> None: ...


@dataclass(slots=True)
class CallService:
    """The node's call handling: its collaborators and what it has done."""

    home_root: Path
    calls_from: str
    models: CallModels
    limits: CallLimits
    count_rejection: Callable[[str], None]
    streaming: StreamingSettings
    max_calls: int = 8
    active: int = 0
    history: list[CallRecord] = field(default_factory=list)
    #: Reads a caller's record from the trust list at every CallStart (blocking: run in a
    #: thread), so an untrust or a block reaches sessions already open. None: the session's
    #: trust at handshake time is used (tests that serve a handler without a node).
    lookup_peer: Callable[[bytes], PeerRecord | None] | None = None
    peer_limits: PeerCallLimits = field(
        default_factory=lambda: PeerCallLimits(
            max_concurrent_per_peer=1, max_per_hour=20, clock=time.monotonic
        )
    )
    load: RecognizerLoad = field(default_factory=RecognizerLoad)
    #: One recognition step at a time for all calls, in turn (see ListenerRun).
    recognizer: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    max_duration_s: float = 3600.0
    max_caption_delay_s: float = 10.0
    #: One translation and synthesis at a time for all calls, in turn (see ListenerRun).
    speech: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    #: A translated cue ready later than this after its speech is shown, not spoken.
    max_speech_delay_s: float | None = 20.0
    #: Called (in a worker thread) after a call's files are complete: the storage bound.
    after_call: Callable[[], object] | None = None
    #: Folders of the calls in progress (the storage bound never deletes them).
    active_dirs: set[Path] = field(default_factory=set)
    observers: list[CallObserver] = field(default_factory=list)
    #: ``call.answer``: answer trusted callers at once, let every call ring, or take none.
    answer_policy: AnswerPolicy = AnswerPolicy.TRUSTED
    #: A ringing call nobody answers ends after this long.
    ring_timeout_s: float = 30.0
    #: Our side of a two-way call (our codec, voice and audio); None: we answer listen-only
    #: with a neutral voice and no audio (tests that serve a handler without a node).
    our_media: OurMediaFactory | None = None
    #: The language our user speaks (our answer's ``speaker_language``).
    our_language: str = "en"
    #: The calls ringing or running now (``parley calls``, ``parley answer/hangup``).
    live: LiveCalls = field(default_factory=LiveCalls)
    #: Where the calls this node places for its user run (RPC ``call.place``): set while
    #: :meth:`serve_placed_calls` runs in the node's nursery.
    placed_calls: trio.Nursery | None = None

    async def serve_placed_calls(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the nursery the calls we place run in, for as long as the node runs."""
        async with trio.open_nursery() as nursery:
            self.placed_calls = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.placed_calls = None

    def calls_dir(self) -> Path:
        return self.home_root / CALLS_DIR

    def status(self, *, limit: int = 5) -> dict[str, object]:
        """For the status RPC: calls running now, and the latest calls' latencies."""
        recent: list[dict[str, object]] = []
        for call in self.history[-limit:]:
            latency = call.summary.get("latency") if call.summary is not None else None
            recent.append(
                {
                    "call_id": call.call_id,
                    "peer": call.peer,
                    "reason": call.reason,
                    "end_reason": call.end_reason.value,
                    "folder": str(call.call_dir) if call.call_dir is not None else None,
                    "latency": latency,
                }
            )
        return {
            "active": self.active,
            "max": self.max_calls,
            "load": self.load.status(),
            "recent": recent,
            "live": [call.as_dict() for call in self.live.calls()],
        }

    def record(self, call: CallRecord) -> None:
        self.history.append(call)
        del self.history[:-MAX_CALL_HISTORY]
        if call.call_dir is not None:
            for observer in self.observers:
                observer.call_ended(call.call_dir.name, call.reason)


def make_call_handler(
    node: CallNode,
    *,
    models: CallModels | None = None,
    limits: CallLimits | None = None,
    our_media: OurMediaFactory | None = None,
) -> SessionHandler:
    """The session handler that serves calls on ``node`` (and pings, like the idle handler).

    ``models`` lets a test or a bench preload the models (``await trio.to_thread.run_sync(
    models.prepare, "en", "pt")``) so the first call does not pay for loading them.
    ``our_media`` replaces the node's own audio (config ``call.input``) for our side.
    """
    chosen_models = (
        models
        if models is not None
        else CallModels.from_config(node.config, home_root=node.home.root)
    )
    call_config = node.config.call
    service = CallService(
        home_root=node.home.root,
        calls_from=node.config.trust.calls_from,
        models=chosen_models,
        limits=limits if limits is not None else CallLimits(),
        count_rejection=node.connections.stats.reject,
        streaming=chosen_models.streaming,
        max_calls=call_config.max_concurrent,
        lookup_peer=node.peers.get,
        peer_limits=PeerCallLimits(
            max_concurrent_per_peer=call_config.max_concurrent_per_peer,
            max_per_hour=call_config.max_per_peer_per_hour,
            clock=time.monotonic,
        ),
        max_duration_s=call_config.max_duration_s,
        max_caption_delay_s=call_config.max_caption_delay_s,
        max_speech_delay_s=call_config.max_speech_delay_s,
        after_call=node.enforce_storage_limits,
        observers=node.call_observers,  # shared: an observer may join before or after this
        answer_policy=AnswerPolicy(call_config.answer),
        ring_timeout_s=call_config.ring_timeout_s,
        our_media=our_media if our_media is not None else node_media(node, chosen_models),
        our_language=call_config.language,
    )
    node.call_service = service  # for the status RPC
    return CallSessionHandler(service)


class CallSessionHandler:
    """Callable as a :data:`~daemon.connections.SessionHandler`; keeps the service reachable."""

    def __init__(self, service: CallService) -> None:
        self.service = service

    async def __call__(self, session: SessionStream, info: SessionInfo) -> None:
        # Between calls a session ends when idle (pings are not activity) or old; a call in
        # progress holds it until the call ends (the call has its own limits).
        lifetime = info.lifetime()
        while not lifetime.over:
            try:
                with trio.move_on_at(lifetime.deadline):
                    message = await session.receive_message()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                # The caller closed the session after its call (its Bye was read by the call).
                # A broken session (a bad frame) propagates: the connection manager counts it.
                return
            if lifetime.over or isinstance(message, Bye):
                return
            if isinstance(message, Ping):
                await session.send_message(Pong(message.nonce))
                continue
            lifetime.activity()
            if isinstance(message, CallStart):
                if not await _serve_call(self.service, session, info, message):
                    return
            else:
                # CodecFrames, Caption or CallEnd outside a call: the peer is confused.
                self.service.count_rejection("call_unexpected_message")
                event(
                    log,
                    logging.INFO,
                    "call.unexpected_message",
                    peer=short_peer_id(info.peer),
                    kind=type(message).__name__,
                )
                return


async def _trust_refusal(service: CallService, info: SessionInfo) -> str | None:
    """``trust.calls_from`` against the caller's trust *now* (read from the trust list)."""
    if service.lookup_peer is None:
        if service.calls_from == "trusted" and info.trust != "trusted":
            return "calls are accepted from trusted peers only"
        return None
    record = await trio.to_thread.run_sync(service.lookup_peer, info.peer)
    return call_refusal(service.calls_from, record)


def _refusal(
    service: CallService, session: SessionStream, info: SessionInfo, start: CallStart
) -> str | None:
    """Why ``start`` cannot be served (cheap checks, before any model is loaded), or None."""
    per_peer = service.peer_limits.refusal(info.peer)
    if per_peer is not None:
        return per_peer
    if service.active >= service.max_calls:
        plural = "s" if service.active != 1 else ""
        return f"busy: this node already serves {service.active} call{plural}, its limit"
    by_load = service.load.refusal(service.max_caption_delay_s)
    if by_load is not None:
        return by_load
    bundle = session.their_bundle
    codec = start.codec
    if bundle is None:
        return "no codec bundle in the handshake: the caller must trust this node to call it"
    if bundle.content_hash != codec.codec_version_hash:
        return "codec version mismatch: CallStart names a codec other than the bundle sent"
    if bundle.architecture_id != codec.architecture_id:
        return "codec architecture mismatch between CallStart and the bundle"
    try:
        config = CodecConfig.from_architecture_id(
            codec.architecture_id, latent_bits=min(max(codec.latent_bits, 1), 8)
        )
    except ValueError as error:
        return f"unusable codec: {error}"
    if not 1 <= codec.latent_bits <= 8:
        return f"unusable codec: latent_bits {codec.latent_bits} is not 1..8"
    if codec.latent_dim != config.latent_dim or not math.isclose(
        codec.frame_rate_hz, config.frame_rate_hz
    ):
        return "codec settings do not match the codec's architecture"
    for tag in (start.speaker_language, start.listener_language):
        try:
            language_key(tag)
        except MediaError:
            return f"{tag[:40]!r} is not a language tag"
    return None


def new_call_dir(service: CallService, call_id: int) -> Path:
    base = service.calls_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for attempt in range(100):
        name = str(call_id) if attempt == 0 else f"{call_id}-{attempt}"
        path = base / name
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path
    raise CallError(f"cannot create a folder for call {call_id} in {base}")


async def _bound_storage(enforce: Callable[[], object]) -> None:
    try:
        await trio.to_thread.run_sync(enforce)
    except OSError as error:
        event(log, logging.WARNING, "storage.not_bounded", reason=str(error))


_load_keys = itertools.count(1)


async def _serve_call(
    service: CallService, session: SessionStream, info: SessionInfo, start: CallStart
) -> bool:
    """Serve one call; return whether the session may go on (False after a violation)."""
    peer = short_peer_id(info.peer)
    refusal = await _trust_refusal(service, info)
    if refusal is None:
        refusal = _refusal(service, session, info, start)
    if refusal is not None:
        await _refuse(service, session, start, peer, refusal)
        return True
    service.active += 1
    service.peer_limits.start(info.peer)
    load_key = next(_load_keys)
    service.load.open_call(load_key)
    try:
        return await _answer_and_hold(service, session, info, start, load_key)
    finally:
        service.active -= 1
        service.peer_limits.end(info.peer)
        service.load.close_call(load_key)
        if service.after_call is not None:
            await _bound_storage(service.after_call)


async def _refuse(
    service: CallService, session: SessionStream, start: CallStart, peer: str, refusal: str
) -> None:
    """A refusal before the call rings: one line, in today's words (the caller parses it)."""
    reason = refusal[:256]
    event(log, logging.INFO, "call.refused", peer=peer, call_id=start.call_id, reason=reason)
    typed, detail = parse_end_reason(reason)
    service.record(CallRecord(start.call_id, peer, None, reason, None, typed, detail))
    await session.send_message(CallEnd(call_id=start.call_id, reason=reason))


@dataclass(slots=True)
class _Incoming:
    """One incoming call and what its shell holds."""

    service: CallService
    session: SessionStream
    info: SessionInfo
    start: CallStart
    protocol: CallProtocol
    live: LiveCall
    load_key: int
    arrived: float


async def _answer_and_hold(
    service: CallService,
    session: SessionStream,
    info: SessionInfo,
    start: CallStart,
    load_key: int,
) -> bool:
    peer = short_peer_id(info.peer)
    arrived = time.monotonic()
    protocol = CallProtocol(
        role=CallRole.CALLEE,
        clock=time.monotonic,
        answer_policy=service.answer_policy,
        caller_trusted=info.trust == "trusted",
        timeouts=CallTimeouts(
            ring_s=service.ring_timeout_s,
            end_s=CALL_END_TIMEOUT_S,
            max_duration_s=service.max_duration_s,
        ),
    )
    events = protocol.receive_message(start)
    incoming = events[0]
    assert isinstance(incoming, IncomingCall)
    live = LiveCall(
        call_id=start.call_id,
        peer=peer,
        role=CallRole.CALLEE,
        protocol=protocol,
        our_language=service.our_language,
        their_language=start.speaker_language,
    )
    service.live.add(live)
    try:
        return await _answered_call(
            _Incoming(service, session, info, start, protocol, live, load_key, arrived)
        )
    finally:
        if live.summary is None:
            live.summary = protocol.summary


async def _answered_call(call: _Incoming) -> bool:
    service, session, info, start = call.service, call.session, call.info, call.start
    protocol, live, load_key, arrived = call.protocol, call.live, call.load_key, call.arrived
    peer = live.peer
    if protocol.state is CallState.ENDED:  # call.answer = never: declined already
        await _send_queued(session, protocol)
        _record_unanswered(service, live, protocol)
        return True
    # Models first (the caller's codec, our recognizer, translator and voice for the pair).
    bundle = session.their_bundle
    assert bundle is not None  # checked by _refusal
    try:
        loaded = await trio.to_thread.run_sync(load_listener, service.models, start, bundle)
    except (CallError, MediaError, InvalidBundleError) as error:
        return await _decline(call, CallEndReason.FAILURE, str(error))
    except Exception as error:  # a dependency's own failure while loading a model
        detail = f"cannot load the call's models: {type(error).__name__}: {error}"
        return await _decline(call, CallEndReason.FAILURE, detail)
    if protocol.state is CallState.RINGING and not _answers_at_once(protocol, service, info):
        event(log, logging.INFO, "call.ringing", peer=peer, call_id=start.call_id)
        if not await _ring(session, protocol, live):
            await _send_queued(session, protocol)
            _record_unanswered(service, live, protocol)
            return protocol.summary is None or protocol.summary.reason not in (
                CallEndReason.PEER_LEFT,
                CallEndReason.SESSION_BROKEN,
            )
    # Our side: codec, voice and (when the caller can decode us) our audio.
    can_decode_us = session.trust_decision is TrustDecision.TRUSTED and info.trust == "trusted"
    answered_at = [arrived]
    media = (
        await service.our_media(start, can_decode_us, live)
        if service.our_media is not None
        else OurMedia(codec=start.codec, voice=NO_VOICE, silent_because="no audio on this node")
    )
    try:
        call_dir = new_call_dir(service, start.call_id)
        listener = open_listener(
            start,
            loaded,
            call_dir=call_dir,
            limits=service.limits,
            streaming=service.streaming,
            # Their audio starts when our answer reaches them: its clock starts at our answer.
            clock=lambda: time.monotonic() - answered_at[0],
            load=service.load,
            load_key=load_key,
            on_speech=media.playout.play if media.playout is not None else None,
            recognizer=service.recognizer,
            speech=service.speech,
            max_speech_delay_s=service.max_speech_delay_s,
        )
        if media.playout is not None:
            live.playout = media.playout
    except (CallLimitError, CallError, MediaError, OSError) as error:
        if media.playout is not None:
            media.playout.close()
        detail = f"cannot start the call: {error}"
        return await _decline(call, CallEndReason.FAILURE, detail)
    live.call_dir = call_dir
    answered_at[0] = time.monotonic()
    if media.playout is not None:
        media.playout.clock_offset_s = answered_at[0]
    protocol.answer(
        CallStart(
            call_id=start.call_id,
            speaker_language=service.our_language,
            listener_language=start.speaker_language,
            codec=media.codec,
            voice=media.voice,
        )
    )
    service.active_dirs.add(call_dir)
    try:
        return await _hold(call, listener, media, call_dir)
    finally:
        service.active_dirs.discard(call_dir)


def _answers_at_once(protocol: CallProtocol, service: CallService, info: SessionInfo) -> bool:
    return (
        decide_answer(service.answer_policy, caller_trusted=info.trust == "trusted")
        is AnswerDecision.ANSWER
    )


async def _ring(session: SessionStream, protocol: CallProtocol, live: LiveCall) -> bool:
    """Ring until our user answers (True), declines, the caller gives up or the ring times out."""
    while protocol.state is CallState.RINGING:
        if live.answer.is_set():
            return True
        if live.hang_up.is_set():
            protocol.decline(CallEndReason.DECLINED, "the user declined the call")
            return False
        with trio.move_on_after(RING_POLL_S):
            message = await session.receive_message()
            protocol.receive_message(message)
            continue
        protocol.tick()
    return False


async def _send_queued(session: SessionStream, protocol: CallProtocol) -> None:
    messages = protocol.messages_to_send()
    if messages:
        try:
            await session.send_messages(messages)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            protocol.session_broken()


def _record_unanswered(service: CallService, live: LiveCall, protocol: CallProtocol) -> None:
    summary = protocol.summary
    assert summary is not None
    sent = protocol.our_end
    reason = sent.reason if sent is not None else format_end_reason(summary.reason, summary.detail)
    live.summary, live.reason = summary, reason
    event(log, logging.INFO, "call.not_answered", peer=live.peer, reason=reason)
    service.record(
        CallRecord(live.call_id, live.peer, None, reason, None, summary.reason, summary.detail)
    )


async def _decline(call: _Incoming, reason: CallEndReason, detail: str) -> bool:
    call.protocol.decline(reason, detail)
    await _send_queued(call.session, call.protocol)
    _record_unanswered(call.service, call.live, call.protocol)
    return True


async def _hold(call: _Incoming, listener: ListenerRun, media: OurMedia, call_dir: Path) -> bool:
    service, session, start = call.service, call.session, call.start
    protocol, live = call.protocol, call.live
    peer = live.peer
    event(
        log,
        logging.INFO,
        "call.started",
        peer=peer,
        call_id=start.call_id,
        languages=f"{start.speaker_language}->{start.listener_language}",
        two_way=media.sender is not None,
        folder=str(call_dir),
    )
    if media.silent_because:
        event(
            log, logging.INFO, "call.listen_only", call_id=start.call_id, why=media.silent_because
        )
    for observer in service.observers:
        observer.call_started(call_dir.name, peer, start)
    ours = CallerCaptions(
        limits=service.limits,
        out_base=call_dir / "ours" if media.sender is not None else None,
        languages=(service.our_language, start.speaker_language),
    )

    def on_caption(caption: Caption) -> None:
        ours.receive(caption)
        live.add_captions("ours", [caption])

    def on_listener_captions(captions: Sequence[Caption]) -> None:
        live.add_captions("theirs", captions)
        for observer in service.observers:
            observer.captions(call_dir.name, captions, listener.now_s())

    def wire_summary(run: ListenerRun | None) -> str:
        return summary_for_wire(_summary(run or listener, start, peer, protocol, None))

    record = CallRecord(start.call_id, peer, call_dir, "", None)

    def on_ended(summary: CallSummary, violation: CallLimitError | None) -> None:
        # Before our CallEnd leaves: whoever reads it finds the call recorded.
        protocol_error = summary.ended_by_us and summary.reason is CallEndReason.PROTOCOL_ERROR
        if violation is None and protocol_error:
            violation = CallLimitError("unexpected_message", summary.detail)
        if violation is not None:
            service.count_rejection(f"call_{violation.code}")
        sent = protocol.our_end
        record.reason = (
            sent.reason if sent is not None else format_end_reason(summary.reason, summary.detail)
        )
        record.end_reason, record.detail, record.call = (
            _record_reason(summary),
            summary.detail,
            summary,
        )
        record.summary = _summary(listener, start, peer, protocol, violation)
        live.summary, live.reason = summary, record.reason
        service.record(record)

    try:
        result = await run_call(
            session,
            protocol,
            sender=media.sender,
            source=media.source,
            hang_up_when_source_ends=False,
            listener=listener,
            on_caption=on_caption if media.sender is not None else None,
            on_listener_captions=on_listener_captions,
            wire_summary=wire_summary,
            hang_up=live.hang_up,
            on_ended=on_ended,
        )
    finally:
        listener.pipeline.close()
        ours.close()
        if media.playout is not None:
            await trio.to_thread.run_sync(media.playout.close)
    summary = result.summary
    violation = result.violation
    if violation is None and summary.reason is CallEndReason.PROTOCOL_ERROR and summary.ended_by_us:
        violation = CallLimitError("unexpected_message", summary.detail)
    # The listener has flushed since the call ended: the final figures.
    figures = _summary(listener, start, peer, protocol, violation)
    if media.playout is not None:
        figures["playout"] = media.playout.figures()
    record.summary = figures
    try:
        write_atomic(call_dir / "summary.json", json.dumps(figures, indent=2).encode(), mode=0o600)
    except OSError as error:
        event(log, logging.WARNING, "call.summary_not_written", reason=str(error))
    event(
        log,
        logging.INFO,
        "call.ended",
        peer=peer,
        call_id=start.call_id,
        ended_by=figures["ended_by"],
    )
    if summary.reason in (CallEndReason.PEER_LEFT, CallEndReason.SESSION_BROKEN):
        return False
    return violation is None and summary.reason is not CallEndReason.MAX_DURATION


def _record_reason(summary: CallSummary) -> CallEndReason:
    """An answered call ended by a hang-up on either side is COMPLETED; else its own reason."""
    if summary.answered and summary.reason in (CallEndReason.HANGUP, CallEndReason.COMPLETED):
        return CallEndReason.COMPLETED
    return summary.reason


def _ended_by(summary: CallSummary | None, violation: CallLimitError | None) -> str:
    """Who or what ended the call, as ``summary.json`` says it (``ended_by``)."""
    if violation is not None:
        return f"limit:{violation.code}"
    if summary is None:
        return "ending"  # our listener's summary for our CallEnd: the call is not over yet
    reason = summary.reason
    if reason is CallEndReason.PEER_LEFT:
        return "caller_left" if summary.role is CallRole.CALLEE else "callee_left"
    if reason in (
        CallEndReason.SESSION_BROKEN,
        CallEndReason.MAX_DURATION,
        CallEndReason.END_TIMEOUT,
    ):
        return str(reason.value)
    us, them = ("callee", "caller") if summary.role is CallRole.CALLEE else ("caller", "callee")
    return us if summary.ended_by_us else them


def _summary(
    listener: ListenerRun,
    start: CallStart,
    peer: str,
    protocol: CallProtocol,
    violation: CallLimitError | None,
) -> dict[str, object]:
    intake = listener.intake
    call = protocol.summary
    failures = list(listener.failures)
    return listener.pipeline.summary(
        call_id=start.call_id,
        peer=peer,
        ended_by="listener_failure" if failures else _ended_by(call, violation),
        end_reason=_record_reason(call).value if call is not None else None,
        end_detail=call.detail if call is not None else "",
        failures=failures,
        frames={
            "messages": intake.messages,
            "frames": intake.frames,
            "keepalives": intake.keepalives,
            "bytes": intake.bytes,
        },
        clock=(
            "seconds since we answered; the speaker paces its audio in real time from our "
            "answer, so latency = listener time - audio time"
        ),
    )


def our_sender(model: CodecModel) -> CallSender:
    """Our side's sender in a call we answered: discontinuous transmission gated by Silero
    (media.call_sender), so frames go out only while someone speaks into our microphone, not
    for room noise or the residual of our own speaker's echo (which Whisper would otherwise
    turn into an invented phrase at the other end; tests/test_call_echo.py)."""
    return CallSender(model, vad=sender_vad())


def node_media(node: CallNode, models: CallModels) -> OurMediaFactory:
    """Our side of the node's calls: its codec, audio from ``call.input``, the other side's
    speech to ``call.output``, echo cancellation between them (``call.echo_cancellation``)."""
    from daemon.call_audio import NONE, open_input, open_output
    from media.echo import EchoCanceller

    async def media(start: CallStart, can_decode_us: bool, live: LiveCall) -> OurMedia:
        config = node.config.call
        ours = node.codecs.current()
        model = new_model(ours.config, ours.checkpoint.state)
        codec = codec_settings(model, ours.version_hash)
        canceller = (
            EchoCanceller()
            if config.echo_cancellation
            and config.output.startswith("speaker")
            and config.input.startswith("mic")
            else None
        )
        playout = None
        try:
            playout = await open_output(config.output, canceller=canceller)
        except MediaError as error:
            event(log, logging.WARNING, "call.no_speaker", reason=str(error))
        if not can_decode_us or config.input == NONE:
            why = "call.input = none" if can_decode_us else "the caller cannot decode us"
            return OurMedia(codec=codec, voice=NO_VOICE, silent_because=why, playout=playout)
        try:
            source, voice = await open_input(
                config.input,
                batch_ms=config.batch_ms,
                transcriber=lambda: models.transcriber(config.language),
                canceller=canceller,
                on_level=lambda level: setattr(live, "input_level_db", round(level, 1)),
                then_silence=True,  # the caller hangs up; until then our room is quiet
            )
        except (CallError, MediaError) as error:
            return OurMedia(codec=codec, voice=NO_VOICE, silent_because=str(error), playout=playout)
        return OurMedia(
            codec=codec,
            voice=voice,
            sender=our_sender(model) if source is not None else None,
            source=source,
            playout=playout,
        )

    return media


__all__ = [
    "CALLS_DIR",
    "CALL_END_TIMEOUT_S",
    "DIAL_TIMEOUT_S",
    "MAX_QUEUED_MESSAGES",
    "VOICE_SAMPLE_S",
    "CallError",
    "CallModels",
    "CallObserver",
    "CallOutcome",
    "CallRecord",
    "CallRefusedError",
    "CallRequest",
    "CallService",
    "CallSessionHandler",
    "CallerCaptions",
    "ListenSettings",
    "OurMediaFactory",
    "dial_peer",
    "make_call_handler",
    "measure_voice",
    "new_call_dir",
    "node_media",
    "our_sender",
    "place_call",
]
