"""The listener half of a call: the other side's frames in, captions and speech out (trio shell).

Theory of operation
-------------------
Both ends of a call run one :class:`ListenerRun` for the other side's audio (issue 14: calls are
symmetric). It wraps a :class:`media.call_receiver.ListenerPipeline` in three stages:

* :meth:`ListenerRun.accept` (called by the session reader, on the event loop) checks each
  ``CodecFrames`` with :class:`~media.call_receiver.FrameIntake` and queues its codes; a broken
  limit raises :class:`~media.call_receiver.CallLimitError` (the shell ends the call with it);
* a recognition task decodes + transcribes in a worker thread, taking every message queued since
  its last run (a slow Whisper decode is followed by a larger batch, never by a growing queue);
* a translation task translates and speaks each finished cue in another worker thread.

Captions go to ``send_captions`` as they are made (the shell hands them to the call machine
for the peer, and to local observers). :meth:`ListenerRun.end_of_audio` closes the input; the
tasks flush Whisper and the translator and :meth:`ListenerRun.run` returns. A failure of our own
models or disk is kept in :attr:`ListenerRun.failures` and ends :meth:`run` early.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from codec.model import CodecModel, model_from_bundle
from daemon.call_admission import RecognizerLoad
from daemon.call_models import CallModels
from daemon.faults import describe_failure
from media.asr import FeatureTranscriber
from media.call_receiver import (
    AcceptedFrames,
    CallLimitError,
    CallLimits,
    FrameIntake,
    ListenerPipeline,
    RecognizeResult,
    SpeechPiece,
)
from media.captions import Cue
from media.errors import MediaError
from media.speech_pieces import SynthesisSpeed
from media.streaming_asr import StreamingSettings, StreamingTranscriber
from media.translate import Translator
from media.tts import Synthesizer
from schemas.messages import CallStart, Caption, CodecFrames, WeightsBundle

__all__ = ["MAX_QUEUED_MESSAGES", "ListenerModels", "ListenerRun", "load_listener", "open_listener"]

#: Messages queued between the reader and the recognizer; past this the listener is overloaded.
MAX_QUEUED_MESSAGES: Final = 2000

SendCaptions = Callable[[Sequence[Caption]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ListenerModels:
    """What listening to one speaker needs: their decoder and our models for the pair."""

    decoder: CodecModel
    transcriber: FeatureTranscriber
    translator: Translator
    synthesizer: Synthesizer
    #: How fast ``synthesizer`` runs on this node (shared by its calls).
    synthesis_speed: SynthesisSpeed


def load_listener(models: CallModels, start: CallStart, bundle: WeightsBundle) -> ListenerModels:
    """Blocking (a worker thread): the speaker's decoder from ``bundle`` and our models for
    ``start``'s languages; raises MediaError / InvalidBundleError (one line each)."""
    decoder = model_from_bundle(bundle, latent_bits=start.codec.latent_bits)
    models.check_languages(start.speaker_language, start.listener_language)
    return ListenerModels(
        decoder=decoder,
        transcriber=models.transcriber(start.speaker_language),
        translator=models.translator(start.speaker_language, start.listener_language),
        synthesizer=models.synthesizer(start.listener_language),
        synthesis_speed=models.synthesis_speed(start.listener_language),
    )


def open_listener(
    start: CallStart,
    loaded: ListenerModels,
    *,
    call_dir: Path,
    limits: CallLimits,
    streaming: StreamingSettings,
    clock: Callable[[], float],
    load: RecognizerLoad | None = None,
    load_key: int = 0,
    on_speech: Callable[[SpeechPiece], None] | None = None,
    recognizer: trio.CapacityLimiter | None = None,
    speech: trio.CapacityLimiter | None = None,
    max_speech_delay_s: float | None = None,
) -> ListenerRun:
    """A listener for the speaker of ``start`` writing into ``call_dir`` (raises
    CallLimitError for an unusable codec, MediaError/OSError for our side). ``on_speech``
    hears each piece of synthesized speech as it may start playing (a speaker's playout)."""
    intake = FrameIntake(start, limits)
    pipeline = ListenerPipeline(
        start=start,
        decoder=loaded.decoder,
        transcriber=StreamingTranscriber(loaded.transcriber, settings=streaming),
        translator=loaded.translator,
        synthesizer=loaded.synthesizer,
        call_dir=call_dir,
        clock=clock,
        on_speech=on_speech,
        synthesis_speed=loaded.synthesis_speed,
        max_speech_delay_s=max_speech_delay_s,
    )
    return ListenerRun(
        pipeline,
        intake=intake,
        frame_rate_hz=start.codec.frame_rate_hz,
        clock=clock,
        load=load,
        load_key=load_key,
        recognizer=recognizer,
        speech=speech,
    )


class ListenerRun:
    """One call's listener tasks (module docstring)."""

    def __init__(
        self,
        pipeline: ListenerPipeline,
        *,
        intake: FrameIntake,
        frame_rate_hz: float,
        clock: Callable[[], float],
        load: RecognizerLoad | None = None,
        load_key: int = 0,
        recognizer: trio.CapacityLimiter | None = None,
        speech: trio.CapacityLimiter | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: One translation and synthesis at a time for all calls sharing it: a synthesizer
        #: uses every core it is given, and several at once starve the recognizer.
        self._speech = speech if speech is not None else trio.CapacityLimiter(1)
        #: One recognition step at a time for all calls sharing it, in turn (FIFO): Whisper
        #: uses every core it is given, and interleaved steps make every call wait for all.
        self._recognizer = recognizer if recognizer is not None else trio.CapacityLimiter(1)
        self.intake = intake
        self._frame_rate = frame_rate_hz
        self._send_captions: SendCaptions | None = None
        self._clock = clock
        self._load = load
        self._load_key = load_key
        self._frames_send, self._frames_receive = trio.open_memory_channel[AcceptedFrames](
            MAX_QUEUED_MESSAGES
        )
        self._cues_send, self._cues_receive = trio.open_memory_channel[Cue](math.inf)
        self._input_closed = False
        self.failures: list[str] = []
        self.finished = trio.Event()

    def now_s(self) -> float:
        """The call clock (seconds since the speaker's CallStart arrived)."""
        return self._clock()

    def set_send_captions(self, send_captions: SendCaptions) -> None:
        """Where the captions go (the call shell sets it before :meth:`run`)."""
        self._send_captions = send_captions

    def accept(self, message: CodecFrames) -> None:
        """Check and queue one message of the other side's audio (raises CallLimitError)."""
        if self._input_closed:
            return  # the input was closed (the call is ending): frames still in flight
        now = self._clock()
        codes = self.intake.accept(message, now_s=now)
        end_s = message.start_time_s + message.frame_count / self._frame_rate
        if message.frame_count:  # not a DTX keepalive
            self.pipeline.latency.add("network", now - end_s)
        if self._load is not None:
            self._load.received(self._load_key, message.frame_count / self._frame_rate)
        try:
            self._frames_send.send_nowait(codes)
        except trio.WouldBlock:
            raise CallLimitError(
                "overloaded", "the listener cannot keep up with the audio"
            ) from None

    def end_of_audio(self) -> None:
        """No more frames: the tasks flush and :meth:`run` returns."""
        self._input_closed = True
        self._frames_send.close()

    async def run(self) -> None:
        """Recognize and translate until the input is closed and everything is flushed."""
        try:
            async with trio.open_nursery() as workers:
                workers.start_soon(self._guarded, self._recognize, workers)
                workers.start_soon(self._guarded, self._translate, workers)
        finally:
            self.finished.set()

    async def _guarded(self, stage: Callable[[], Awaitable[None]], workers: trio.Nursery) -> None:
        # A failure of our own models or disk ends this listener, not the node.
        try:
            await stage()
        except (MediaError, OSError, ValueError) as error:
            self.failures.append(describe_failure(error))  # "disk full: ..." for ENOSPC
            workers.cancel_scope.cancel()

    async def _recognize(self) -> None:
        async with self._cues_send, self._frames_receive:
            while True:
                try:
                    batch = [await self._frames_receive.receive()]
                except trio.EndOfChannel:
                    break
                async with self._recognizer:
                    # What arrived while this call waited for its turn joins the batch.
                    while True:
                        try:
                            batch.append(self._frames_receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    # Others waiting: decode only where words become final (issue 16).
                    partials = self._recognizer.statistics().tasks_waiting == 0
                    started = time.monotonic()
                    result = await trio.to_thread.run_sync(
                        functools.partial(self.pipeline.recognize, batch, partials=partials)
                    )
                if self._load is not None:
                    audio_s = sum(item.frame_count for item in batch) / self._frame_rate
                    self._load.recognized(self._load_key, audio_s, time.monotonic() - started)
                await self._deliver(result)
            async with self._recognizer:
                result = await trio.to_thread.run_sync(self.pipeline.finish_recognition)
            await self._deliver(result)

    async def _translate(self) -> None:
        async with self._cues_receive:
            async for cue in self._cues_receive:
                async with self._speech:
                    captions = await trio.to_thread.run_sync(self.pipeline.translate, cue)
                if captions and self._send_captions is not None:
                    await self._send_captions(captions)

    async def _deliver(self, result: RecognizeResult) -> None:
        if result.captions and self._send_captions is not None:
            await self._send_captions(result.captions)
        for cue in result.cues:
            await self._cues_send.send(cue)
