"""The listener's media pipeline for one call, sans-IO: ``CodecFrames`` in, captions, a translated
transcript and synthesized speech out.

Theory of operation
-------------------
Three synchronous stages; the node's call shell (:mod:`daemon.calls`) runs the first one on the
event loop (it is cheap) and the other two in worker threads, one task each, so Whisper never
blocks the loop and translation of one cue overlaps recognition of the next:

1. :class:`FrameIntake` (cheap, every message): checks that a ``CodecFrames`` message is the next
   in sequence, contiguous in audio time, not oversized, and that frames do not arrive faster than
   ``max_speed`` times real time (the audio received never exceeds ``burst_s`` plus
   ``max_speed`` times the time since ``CallStart``); then unpacks the codes. A violation is a
   :class:`CallLimitError` (a :class:`~schemas.errors.RemoteProtocolError`): the shell ends the
   call and counts it. With a DTX sender (:mod:`media.call_sender`) messages skip the silence:
   a message may start later than the last one ended (on the latent grid), and a keepalive
   (no frames) announces silence up to its time; the intake places every message on the
   call's timeline (:class:`AcceptedFrames`: the gap before it, whether it opens a talkspurt,
   the sender's end mark). Time never goes back, and the flood limit counts announced time.
2. :meth:`ListenerPipeline.recognize` (worker thread): the sender's codec decodes the codes,
   a fresh decoder per talkspurt (:class:`TalkspurtDecoder`); gaps reach the
   :class:`~media.streaming_asr.StreamingTranscriber` as silence (``push_silence``: captions
   keep the call's clock), the sender's end mark as ``end_of_speech`` (the utterance is
   finalized at once instead of after the recognizer's own silence timer); finalized words
   go to the
   :class:`~media.captions.CueBuilder`. Each finished cue is appended to ``call.<src>.vtt/.srt``
   and returned for stage 3; partial captions (the open cue's words + the revisable hypothesis)
   and final cues become ``Caption`` messages for the caller.
3. :meth:`ListenerPipeline.translate` (worker thread, one cue at a time): the cue text is
   translated, re-timed onto the cue (:func:`~media.captions.retime_text`), appended to
   ``call.<dst>.vtt/.srt``, sent as a final ``Caption`` in the listener's language, and spoken
   with the caller's voice traits into ``received.<dst>.wav`` (16-bit PCM at the synthesizer's
   rate; each cue's speech starts no earlier than the cue, so the file follows the call's
   timeline, late where synthesis is slower than speech). The text is synthesized in pieces
   (:mod:`media.speech_pieces`): a short first piece, then growing ones, each handed to
   ``on_speech`` (the playout) as a :class:`SpeechPiece` as soon as the audio in hand covers
   the predicted time to make the rest, so the listener hears the start of a cue before its
   end is synthesized. A cue whose translation is ready more than ``max_speech_delay_s``
   after its speech ended (a node behind on its calls) is shown but not spoken
   (``speech_shed``): late speech no longer fits the conversation, and synthesis would take
   the cores the captions need.

Clock: ``clock()`` is seconds since the call started *at the listener*, i.e. since ``CallStart``
arrived. The caller sends ``CallStart`` and then paces its audio in real time from that moment,
so audio time ``t`` was spoken at about ``clock() == t`` (the ``CallStart`` message's own one-way
delay is the error; on loopback, well under a millisecond). Every latency below rests on that:

* ``network``: arrival of a message minus the audio time of its last frame (so it includes the
  sender's batching and the encoder's lookahead, which a listener feels the same way);
* ``decode``, ``asr``, ``translation``, ``tts``: compute time per message, push, or cue;
* ``caption``: end of utterance -> finalized caption: when a cue is finished, minus the audio
  time its last word ends;
* ``translated_caption`` and ``speech``: the same for its translation and the first piece of its
  synthesized audio handed to the playout; ``tts_first`` is the synthesis time until then,
  ``tts`` the whole cue's.

If the caller does not pace its audio (a test may run faster than real time), the numbers are
still computed but mean "relative to the audio clock"; the summary says how the caller paced.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from codec.errors import InvalidCodecFramesError
from codec.latent import MAX_BITS, MIN_BITS, payload_size, unpack_codes
from codec.model import CodecModel
from media.captions import CaptionError, Cue, CueBuilder, retime_text
from media.codec_stream import StreamingDecoder
from media.errors import MediaError
from media.features import FRAMES_PER_SECOND
from media.latency import LatencyStats
from media.speech_pieces import PlayoutGate, SynthesisSpeed, split_for_speech
from media.streaming_asr import (
    CaptionEvent,
    FinalWords,
    PartialCaption,
    StreamingTranscriber,
    UtteranceEnd,
)
from media.subtitles import CaptionTracks, open_caption_tracks
from media.translate import Translator, language_key
from media.tts import Speech, Synthesizer
from schemas.errors import RemoteProtocolError
from schemas.messages import CallStart, Caption, CodecFrames, VoiceTraits, WordTime

__all__ = [
    "LATENCY_STAGES",
    "SPEECH_END",
    "AcceptedFrames",
    "CallLimitError",
    "CallLimits",
    "FedTimeline",
    "FrameIntake",
    "ListenerPipeline",
    "RecognizeResult",
    "SilenceGap",
    "SpeechEndMark",
    "SpeechPiece",
    "TalkspurtDecoder",
    "TimelinePiece",
    "check_caption",
    "feed_transcriber",
    "parse_wire_summary",
    "summary_for_wire",
]

#: The stages every summary reports (count 0 when a stage never ran).
LATENCY_STAGES: Final = (
    "network",
    "decode",
    "asr",
    "caption",
    "translation",
    "translated_caption",
    "tts",
    "tts_first",
    "speech",
)
#: The caller's voice traits must be plausible for a human voice to be used.
_PITCH_RANGE_HZ: Final = (40.0, 600.0)
_RATE_RANGE_WPS: Final = (0.2, 10.0)


class CallLimitError(RemoteProtocolError):
    """The caller broke a limit of the call (rate, size, order); ``code`` names which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class CallLimits:
    """Every bound a caller's media must respect (STYLE.md 15: named, validated)."""

    #: Frames may arrive at most this many times faster than real time, sustained.
    max_speed: float = 1.5
    #: ...with at most this much audio arriving early in one burst.
    burst_s: float = 2.0
    #: One ``CodecFrames`` message carries at most this much audio.
    max_message_s: float = 2.0
    #: A call ends when it reaches this much audio.
    max_call_s: float = 4 * 3600.0
    #: Captions a caller accepts from the listener (a cue is at most ~84 characters; a
    #: partial at most a Whisper window of words).
    max_caption_chars: int = 1000
    max_caption_words: int = 256

    def __post_init__(self) -> None:
        for name in ("max_speed", "burst_s", "max_message_s", "max_call_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.max_speed < 1.0:
            raise ValueError("max_speed must be >= 1 (real time must always be allowed)")
        if self.max_caption_chars < 1 or self.max_caption_words < 1:
            raise ValueError("caption limits must be >= 1")


@dataclass(frozen=True, slots=True, eq=False)
class AcceptedFrames:
    """One checked ``CodecFrames`` message, placed on the call's timeline.

    ``gap_frames`` latent frames of silence come before ``codes`` (the sender sent nothing for
    them: DTX); ``new_talkspurt``: the codes begin a talkspurt, which the sender encoded with a
    fresh encoder, so they need a fresh decoder; ``speech_end``: the sender's VAD says the
    speech ended with these codes (a keepalive has no codes and may carry the mark too).
    """

    codes: npt.NDArray[np.uint8]
    gap_frames: int = 0
    new_talkspurt: bool = False
    speech_end: bool = False

    @property
    def frame_count(self) -> int:
        return int(self.codes.shape[0])


class FrameIntake:
    """Validates the caller's ``CodecFrames`` and unpacks them (module docstring, stage 1).

    Gap-aware (DTX, :mod:`media.call_sender`): a message may start later than the previous one
    ended, on the latent-frame grid; the gap is silence. A message with no frames and an empty
    payload is a keepalive: "silence up to ``start_time_s``". Time never goes back. The flood
    and length limits count the *announced* timeline, silence included, so a gap cannot run
    ahead of real time by more than ``burst_s`` either.
    """

    #: How far off the latent grid a start time may be (float rounding of ``k / rate``).
    GRID_TOLERANCE: Final = 1e-3

    def __init__(self, start: CallStart, limits: CallLimits) -> None:
        codec = start.codec
        if not MIN_BITS <= codec.latent_bits <= MAX_BITS:
            raise CallLimitError("bad_codec", f"latent_bits {codec.latent_bits} is not 1..8")
        if not (math.isfinite(codec.frame_rate_hz) and 1.0 <= codec.frame_rate_hz <= 1000.0):
            raise CallLimitError("bad_codec", f"frame rate {codec.frame_rate_hz} Hz is implausible")
        self._codec = codec
        self._limits = limits
        self._rate = codec.frame_rate_hz
        self._max_frames = max(1, math.floor(limits.max_message_s * self._rate))
        self._next_seq = 0
        self._frames = 0
        self._timeline = 0
        self._in_talkspurt = False
        self._bytes = 0
        self._messages = 0
        self._keepalives = 0

    @property
    def frames(self) -> int:
        """Latent frames received (silence skipped by the sender not counted)."""
        return self._frames

    @property
    def messages(self) -> int:
        return self._messages

    @property
    def keepalives(self) -> int:
        return self._keepalives

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def audio_s(self) -> float:
        """The call's timeline so far: audio received plus the silence announced."""
        return self._timeline / self._rate

    def accept(self, message: CodecFrames, *, now_s: float) -> AcceptedFrames:
        """Check ``message`` (arrived at ``now_s`` on the call clock); place its codes."""
        codec, limits = self._codec, self._limits
        if message.seq != self._next_seq:
            raise CallLimitError(
                "out_of_order", f"CodecFrames seq {message.seq}, expected {self._next_seq}"
            )
        if not 0 <= message.frame_count <= self._max_frames:
            raise CallLimitError(
                "oversized",
                f"CodecFrames with {message.frame_count} frames (0..{self._max_frames} allowed)",
            )
        expected_bytes = payload_size(message.frame_count, codec.latent_dim, codec.latent_bits)
        if len(message.payload) != expected_bytes:
            raise CallLimitError(
                "bad_payload",
                f"CodecFrames payload of {len(message.payload)} bytes, expected {expected_bytes}",
            )
        position = message.start_time_s * self._rate
        first = round(position)
        if abs(position - first) > self.GRID_TOLERANCE or first < self._timeline:
            raise CallLimitError(
                "not_contiguous",
                f"CodecFrames starts at {message.start_time_s:.6f} s, expected a latent frame "
                f"at or after {self._timeline / self._rate:.6f} s",
            )
        timeline = first + message.frame_count
        if timeline / self._rate > limits.max_call_s:
            raise CallLimitError("too_long", f"the call reached {limits.max_call_s:.0f} s")
        # Cumulative, from CallStart: the caller has announced at most max_speed times the time
        # that has passed, plus a burst. Not a sliding window: while we load models after
        # CallStart the frames wait in the socket and then arrive together, which is not a flood.
        allowed_s = limits.burst_s + limits.max_speed * max(0.0, now_s)
        if timeline / self._rate > allowed_s + 1e-9:
            raise CallLimitError(
                "flood",
                f"codec frames arrive faster than {limits.max_speed:g}x real time",
            )
        if message.frame_count:
            try:
                codes = unpack_codes(
                    message.payload,
                    frame_count=message.frame_count,
                    latent_dim=codec.latent_dim,
                    bits=codec.latent_bits,
                )
            except InvalidCodecFramesError as error:
                raise CallLimitError("bad_payload", str(error)) from error
        else:
            codes = np.empty((0, codec.latent_dim), dtype=np.uint8)
            self._keepalives += 1
        gap = first - self._timeline
        # The sender restarts its encoder after a gap, a keepalive or its end mark.
        if gap or not message.frame_count:
            self._in_talkspurt = False
        accepted = AcceptedFrames(
            codes=codes,
            gap_frames=gap,
            new_talkspurt=bool(message.frame_count) and not self._in_talkspurt,
            speech_end=message.speech_end,
        )
        self._in_talkspurt = bool(message.frame_count) and not message.speech_end
        self._next_seq += 1
        self._frames += message.frame_count
        self._timeline = timeline
        self._bytes += len(message.payload)
        self._messages += 1
        return accepted


@dataclass(frozen=True, slots=True)
class SilenceGap:
    """``frames`` log-mel frames of silence the sender did not send (DTX)."""

    frames: int


class SpeechEndMark:
    """The sender's VAD heard the speech end here."""


SPEECH_END: Final = SpeechEndMark()
#: The call's timeline as stage 2 sees it: decoded log-mel ``(80, k)``, gaps, end marks.
TimelinePiece = npt.NDArray[np.float32] | SilenceGap | SpeechEndMark


class TalkspurtDecoder:
    """Accepted messages -> the call's log-mel timeline (stage 2, first half).

    The sender encodes each talkspurt with a fresh encoder (:mod:`media.call_sender`), so each
    gets a fresh :class:`~media.codec_stream.StreamingDecoder`, flushed (batch end padding) when
    the talkspurt ends: at the sender's end mark, a gap or a keepalive. A sender without DTX
    sends one talkspurt, the whole call.
    """

    def __init__(self, model: CodecModel, latency: LatencyStats | None = None) -> None:
        self._model = model
        self._stride = model.config.stride
        self._decoder = StreamingDecoder(model)
        self.latency = latency if latency is not None else LatencyStats()

    def decode(self, batches: Sequence[AcceptedFrames]) -> list[TimelinePiece]:
        pieces: list[TimelinePiece] = []
        for item in batches:
            if item.gap_frames or item.new_talkspurt:
                pieces.extend(self.finish())
            if item.gap_frames:
                pieces.append(SilenceGap(item.gap_frames * self._stride))
            if item.frame_count:
                started = time.perf_counter()
                pieces.append(self._decoder.push(item.codes))
                self.latency.add("decode", time.perf_counter() - started)
            if item.speech_end:
                pieces.extend(self.finish())
                pieces.append(SPEECH_END)
        return pieces

    def finish(self) -> list[TimelinePiece]:
        """The talkspurt is over: its last frames; a fresh decoder for the next one."""
        if not self._decoder.latent_frames_in:
            return []
        started = time.perf_counter()
        tail = self._decoder.finish()
        self._decoder = StreamingDecoder(self._model)
        self.latency.add("decode", time.perf_counter() - started)
        return [tail]


@dataclass(slots=True)
class FedTimeline:
    """What :func:`feed_transcriber` did: the events, and the log-mel frames the timeline
    moved by (silence included)."""

    events: list[CaptionEvent] = field(default_factory=list)
    frames: int = 0
    worked: bool = False


def feed_transcriber(
    transcriber: StreamingTranscriber,
    pieces: Sequence[TimelinePiece],
    *,
    clock: Callable[[], float],
    partials: bool = True,
) -> FedTimeline:
    """Hand the timeline to the recognizer: consecutive log-mel in one push (one decode
    decision), gaps as :meth:`~StreamingTranscriber.push_silence`, the sender's end marks as
    :meth:`~StreamingTranscriber.end_of_speech`."""
    fed = FedTimeline()
    mels: list[npt.NDArray[np.float32]] = []

    def push_mel() -> None:
        mel = np.concatenate(mels, axis=1) if len(mels) > 1 else (mels[0] if mels else None)
        mels.clear()
        if mel is not None and mel.shape[1]:
            fed.frames += int(mel.shape[1])
            fed.worked = True
            fed.events.extend(transcriber.push(mel, now_s=clock(), partials=partials))

    for piece in pieces:
        if isinstance(piece, np.ndarray):
            mels.append(piece)
            continue
        push_mel()
        if isinstance(piece, SilenceGap):
            fed.frames += piece.frames
            fed.events.extend(transcriber.push_silence(piece.frames, now_s=clock()))
        else:
            fed.worked = True
            fed.events.extend(transcriber.end_of_speech(now_s=clock()))
    push_mel()
    return fed


@dataclass(frozen=True, slots=True, eq=False)
class SpeechPiece:
    """A piece of one cue's synthesized speech, handed to the playout in order; the pieces of
    one utterance share ``utterance_id`` and the last one is ``final``."""

    utterance_id: int
    samples: npt.NDArray[np.float32]
    sample_rate: int
    #: The audio time the cue's speech ended on the speaker's side (mouth-to-ear's start).
    speech_end_s: float
    final: bool


@dataclass(slots=True)
class RecognizeResult:
    """What one recognition step produced: messages for the caller, cues to translate."""

    captions: list[Caption] = field(default_factory=list)
    cues: list[Cue] = field(default_factory=list)


def _check_voice(voice: VoiceTraits) -> VoiceTraits | None:
    pitch_ok = _PITCH_RANGE_HZ[0] <= voice.median_pitch_hz <= _PITCH_RANGE_HZ[1]
    rate_ok = _RATE_RANGE_WPS[0] <= voice.speaking_rate_wps <= _RATE_RANGE_WPS[1]
    return voice if pitch_ok and rate_ok else None


class ListenerPipeline:
    """Decode -> ASR -> cues -> translation -> speech for one call (module docstring).

    ``recognize``/``finish_recognition`` must be called from one thread at a time, and
    ``translate`` from one thread at a time (they share no mutable state but the latency
    lists, whose appends are atomic).
    """

    def __init__(
        self,
        *,
        start: CallStart,
        decoder: CodecModel,
        transcriber: StreamingTranscriber,
        translator: Translator,
        synthesizer: Synthesizer,
        call_dir: Path,
        clock: Callable[[], float],
        latency: LatencyStats | None = None,
        on_speech: Callable[[SpeechPiece], None] | None = None,
        synthesis_speed: SynthesisSpeed | None = None,
        max_speech_delay_s: float | None = None,
    ) -> None:
        #: A cue whose translation is ready later than this after its speech ended is shown
        #: but not spoken (None: always spoken); see :meth:`translate`.
        self._max_speech_delay_s = max_speech_delay_s
        #: Hears the speech we synthesize, piece by piece as each may start playing (stage 3):
        #: a live speaker's playout.
        self._on_speech = on_speech
        #: How fast our synthesizer runs (shared by the calls of a node: :class:`CallModels`).
        self._synthesis_speed = synthesis_speed if synthesis_speed is not None else SynthesisSpeed()
        self._utterance_ids = itertools.count(1)
        self._start = start
        self._source = start.speaker_language
        self._target = start.listener_language
        self._same_language = language_key(self._source) == language_key(self._target)
        self._voice = _check_voice(start.voice)
        self._transcriber = transcriber
        self._translator = translator
        self._synthesizer = synthesizer
        self._clock = clock
        self.latency = latency if latency is not None else LatencyStats()
        self._decoder = TalkspurtDecoder(decoder, self.latency)
        self._builder = CueBuilder()
        self._seq = itertools.count()
        self._call_dir = call_dir
        call_dir.mkdir(parents=True, exist_ok=True)
        self._tracks: CaptionTracks = open_caption_tracks(
            call_dir / "call", [self._source, self._target]
        )
        self._wav_path = call_dir / f"received.{self._target}.wav"
        self._wav: wave.Wave_write | None = None
        self._wav_file: BinaryIO | None = None
        self._wav_rate = 0
        self._wav_samples = 0
        # Word-time hygiene for the cue builder (see _add_word).
        self._last_word_start = 0.0
        self._last_cue_end = 0.0
        self._last_partial = ""
        self._mel_frames = 0
        self._asr_seconds = 0.0
        self.counts: dict[str, int] = {
            "source_cues": 0,
            "translated_cues": 0,
            "partials_sent": 0,
            "words_dropped": 0,
            "translation_errors": 0,
            "tts_errors": 0,
            # Speech in pieces: pieces synthesized, and utterances whose first piece went to
            # the playout before their last was made (the gate opened early).
            "tts_pieces": 0,
            "tts_early_starts": 0,
            # Cues shown but not spoken: their translation came past max_speech_delay_s.
            "speech_shed": 0,
        }
        self._closed = False

    @property
    def call_dir(self) -> Path:
        return self._call_dir

    @property
    def wav_path(self) -> Path:
        return self._wav_path

    @property
    def voice_used(self) -> VoiceTraits | None:
        return self._voice

    # -- stage 2 ---------------------------------------------------------------------------

    def recognize(
        self, batches: Sequence[AcceptedFrames], *, partials: bool = True
    ) -> RecognizeResult:
        """Decode and transcribe one or more accepted messages (in order); ``partials=False``
        when other calls wait for the recognizer (no decodes for partial captions only)."""
        return self._transcribe(self._decoder.decode(batches), finish=False, partials=partials)

    def finish_recognition(self) -> RecognizeResult:
        """End of the caller's audio: flush the decoder, the ASR and the open cue."""
        return self._transcribe(self._decoder.finish(), finish=True)

    def _transcribe(
        self, pieces: Sequence[TimelinePiece], *, finish: bool, partials: bool = True
    ) -> RecognizeResult:
        result = RecognizeResult()
        started = time.perf_counter()
        fed = feed_transcriber(self._transcriber, pieces, clock=self._clock, partials=partials)
        self._mel_frames += fed.frames
        events = fed.events
        if finish:
            events.extend(self._transcriber.finish(now_s=self._clock()))
        elapsed = time.perf_counter() - started
        if fed.worked or finish:
            self.latency.add("asr", elapsed)
            self._asr_seconds += elapsed
        partial_text: str | None = None
        for event in events:
            if isinstance(event, FinalWords):
                for word in event.words:
                    self._finish_cues(result, self._add_word(word.word, word.start_s, word.end_s))
                partial_text = ""
            elif isinstance(event, UtteranceEnd):
                self._finish_cues(result, self._close_pending(event.no_word_before_s))
                partial_text = ""
            elif isinstance(event, PartialCaption):
                partial_text = event.text
        if finish:
            self._finish_cues(result, self._builder.finish())
            partial_text = ""
        if partial_text is not None:
            self._send_partial(result, partial_text)
        return result

    def _add_word(self, text: str, start_s: float, end_s: float) -> list[Cue]:
        # Whisper's word times jitter: a committed word may start a few ms before the previous
        # one or inside the cue just closed. Nudge it forward rather than lose it.
        start = max(start_s, self._last_word_start, self._last_cue_end)
        end = max(end_s, start)
        try:
            cues = self._builder.add_word(WordTime(word=text, start_s=start, end_s=end))
        except CaptionError:
            self.counts["words_dropped"] += 1
            return []
        self._last_word_start = start
        return cues

    def _close_pending(self, no_word_before_s: float) -> list[Cue]:
        pending = self._builder.pending_words
        at = max([no_word_before_s, *(w.start_s for w in pending[-1:])])
        try:
            return self._builder.close_pending(at)
        except CaptionError:
            return self._builder.finish()

    def _send_partial(self, result: RecognizeResult, hypothesis: str) -> None:
        pending = " ".join(w.word for w in self._builder.pending_words)
        text = " ".join(f"{pending} {hypothesis}".split())
        if text == self._last_partial:
            return
        self._last_partial = text
        words = self._builder.pending_words
        start = words[0].start_s if words else self._mel_frames / FRAMES_PER_SECOND
        result.captions.append(
            Caption(
                seq=next(self._seq),
                start_s=start,
                end_s=max(start, self._mel_frames / FRAMES_PER_SECOND),
                text=text,
                language=self._source,
                final=False,
                words=(),
                voice=self._start.voice,
            )
        )
        self.counts["partials_sent"] += 1

    def _finish_cues(self, result: RecognizeResult, cues: list[Cue]) -> None:
        for cue in cues:
            self._last_cue_end = max(self._last_cue_end, cue.end_s)
            self._tracks.write_cue(self._source, cue)
            self.counts["source_cues"] += 1
            self.latency.add("caption", self._clock() - _speech_end(cue))
            result.captions.append(
                Caption(
                    seq=next(self._seq),
                    start_s=cue.start_s,
                    end_s=cue.end_s,
                    text=cue.text,
                    language=self._source,
                    final=True,
                    words=cue.words,
                    voice=self._start.voice,
                )
            )
            result.cues.append(cue)

    # -- stage 3 ---------------------------------------------------------------------------

    def translate(self, cue: Cue) -> list[Caption]:
        """Translate one finished cue, write it, speak it; return the caption for the caller."""
        started = time.perf_counter()
        try:
            text = self._translator.translate([cue.text])[0]
        except MediaError:
            self.counts["translation_errors"] += 1
            return []
        self.latency.add("translation", time.perf_counter() - started)
        self.latency.add("translated_caption", self._clock() - _speech_end(cue))
        if not self._same_language:
            for translated in retime_text([cue], [text]):
                self._tracks.write_cue(self._target, translated)
        self.counts["translated_cues"] += 1
        caption = Caption(
            seq=next(self._seq),
            start_s=cue.start_s,
            end_s=cue.end_s,
            text=text,
            language=self._target,
            final=True,
            words=(),
            voice=self._start.voice,
        )
        late_s = self._clock() - _speech_end(cue)
        if self._max_speech_delay_s is not None and late_s > self._max_speech_delay_s:
            # Speech this late no longer belongs to the conversation, and making it would take
            # the cores the captions need (a node behind on several calls): show, don't speak.
            self.counts["speech_shed"] += 1
        else:
            self._speak(text, cue)
        return [caption]

    def _speak(self, text: str, cue: Cue) -> None:
        pieces = split_for_speech(text)
        if not pieces:
            return
        utterance_id = next(self._utterance_ids)
        gate = PlayoutGate([len(piece.split()) for piece in pieces], self._synthesis_speed)
        held: list[Speech] = []
        handed = 0  # pieces given to the playout so far
        rate = 0  # theirs: every piece of one utterance reaches the playout at one rate
        started = time.perf_counter()
        for index, piece in enumerate(pieces):
            piece_started = time.perf_counter()
            try:
                speech = self._synthesizer.synthesize(piece, voice=self._voice)
            except MediaError:
                self.counts["tts_errors"] += 1
                break
            piece_wall = time.perf_counter() - piece_started
            self.counts["tts_pieces"] += 1
            self._synthesis_speed.measured(piece_wall, speech.duration_s)
            self._write_speech(speech, cue)
            held.append(speech)
            last = index == len(pieces) - 1
            if gate.synthesized(speech.duration_s) or last:
                if handed == 0:
                    if not last:
                        self.counts["tts_early_starts"] += 1
                    self.latency.add("tts_first", time.perf_counter() - started)
                    self.latency.add("speech", self._clock() - _speech_end(cue))
                for speech_in_hand in held:
                    handed += 1
                    rate = speech_in_hand.sample_rate
                    self._hand_over(utterance_id, speech_in_hand, cue,
                                    final=last and speech_in_hand is held[-1])  # fmt: skip
                held = []
        else:
            self.latency.add("tts", time.perf_counter() - started)
            return
        # A piece failed: what was made still plays, and the utterance is closed for the
        # playout (an open one would hold every later utterance back).
        for speech_in_hand in held:
            handed += 1
            rate = speech_in_hand.sample_rate
            self._hand_over(utterance_id, speech_in_hand, cue, final=False)
        if handed:
            self._hand_over(utterance_id, Speech(np.zeros(0, np.float32), rate), cue, final=True)

    def _hand_over(self, utterance_id: int, speech: Speech, cue: Cue, *, final: bool) -> None:
        if self._on_speech is not None:
            self._on_speech(
                SpeechPiece(
                    utterance_id=utterance_id,
                    samples=np.asarray(speech.samples, dtype=np.float32),
                    sample_rate=speech.sample_rate,
                    speech_end_s=_speech_end(cue),
                    final=final,
                )
            )

    def _write_speech(self, speech: Speech, cue: Cue) -> None:
        if self._wav is None:
            # Private like every file the node writes (wave.open would create it 0644).
            descriptor = os.open(self._wav_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(descriptor, 0o600)
            self._wav_file = os.fdopen(descriptor, "wb")
            self._wav = wave.open(self._wav_file, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(speech.sample_rate)
            self._wav_rate = speech.sample_rate
        samples = speech.samples
        if speech.sample_rate != self._wav_rate:
            samples = speech.at_rate(self._wav_rate).samples
        # Follow the call's timeline: never start before the cue does.
        gap = round(cue.start_s * self._wav_rate) - self._wav_samples
        pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        frames = (pcm * 32767.0).astype("<i2")
        if gap > 0:
            frames = np.concatenate([np.zeros(gap, dtype="<i2"), frames])
        self._wav.writeframes(frames.tobytes())
        self._wav_samples += int(frames.shape[0])

    # -- end -------------------------------------------------------------------------------

    @property
    def audio_s(self) -> float:
        return self._mel_frames / FRAMES_PER_SECOND

    @property
    def speech_s(self) -> float:
        return self._wav_samples / self._wav_rate if self._wav_rate else 0.0

    @property
    def asr_seconds(self) -> float:
        return self._asr_seconds

    @property
    def files(self) -> list[Path]:
        paths = list(self._tracks.paths)
        if self._wav_rate:
            paths.append(self._wav_path)
        return paths

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tracks.close()
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._wav_file is not None:
            self._wav_file.close()  # wave does not close a file object it was given
            self._wav_file = None

    def summary(self, **extra: object) -> dict[str, object]:
        """The call's figures, JSON-ready (``extra`` adds the shell's fields)."""
        audio_s = self.audio_s
        return {
            "speaker_language": self._source,
            "listener_language": self._target,
            "audio_s": audio_s,
            "speech_s": self.speech_s,
            "speech_sample_rate": self._wav_rate or None,
            "voice": {
                "median_pitch_hz": self._start.voice.median_pitch_hz,
                "speaking_rate_wps": self._start.voice.speaking_rate_wps,
                "used": self._voice is not None,
            },
            "counts": dict(self.counts),
            "asr_rtf": self._asr_seconds / audio_s if audio_s > 0 else None,
            "latency": self.latency.as_dict(LATENCY_STAGES),
            "files": sorted(path.name for path in self.files),
            **extra,
        }


def _speech_end(cue: Cue) -> float:
    """Audio time the cue's speech ends (its last word; a cue's display may run longer)."""
    return max((w.end_s for w in cue.words), default=cue.end_s)


# -- the summary on the wire ------------------------------------------------------------------

#: ``CallEnd.summary_json`` holds at most this many characters (schemas/codec.py).
MAX_WIRE_SUMMARY_CHARS: Final = 16384
#: What a caller keeps from a peer's summary: these keys, with JSON-scalar values or the
#: latency table; anything else is dropped.
_WIRE_KEYS: Final = ("audio_s", "speech_s", "asr_rtf", "ended_by", "speaker_language",
                     "listener_language", "counts", "latency")  # fmt: skip


def summary_for_wire(summary: Mapping[str, object]) -> str:
    """The listener's summary as JSON for ``CallEnd.summary_json`` (bounded: the latency table
    alone if the whole does not fit)."""
    text = json.dumps({key: summary[key] for key in _WIRE_KEYS if key in summary})
    if len(text) <= MAX_WIRE_SUMMARY_CHARS:
        return text
    return json.dumps({"latency": summary.get("latency", {})})[:MAX_WIRE_SUMMARY_CHARS]


def parse_wire_summary(text: str) -> dict[str, object] | None:
    """A peer's ``summary_json``, checked: an object whose latency entries are numbers or null.

    The text comes from the peer: anything unexpected is dropped (or ``None`` for a text that is
    not a JSON object at all), never raised.
    """
    if not text or len(text) > MAX_WIRE_SUMMARY_CHARS:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    result: dict[str, object] = {}
    for key in _WIRE_KEYS:
        value = data.get(key)
        if key == "latency" and isinstance(value, dict):
            result[key] = {
                str(stage): {
                    name: float(number)
                    for name, number in entry.items()
                    if name in ("p50_s", "p95_s", "max_s", "count") and _is_number(number)
                }
                for stage, entry in value.items()
                if isinstance(entry, dict)
            }
        elif key == "counts" and isinstance(value, dict):
            result[key] = {str(k): int(v) for k, v in value.items() if _is_number(v)}
        elif isinstance(value, str) and len(value) <= 256:
            result[key] = value
        elif _is_number(value):
            result[key] = float(value)  # type: ignore[arg-type]
    return result


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_caption(caption: Caption, limits: CallLimits) -> None:
    """A caption from the listener, as the caller receives it: bounded and well-timed."""
    if len(caption.text) > limits.max_caption_chars:
        raise CallLimitError(
            "caption_too_long",
            f"Caption of {len(caption.text)} characters (limit {limits.max_caption_chars})",
        )
    if len(caption.words) > limits.max_caption_words:
        raise CallLimitError(
            "caption_too_long",
            f"Caption of {len(caption.words)} words (limit {limits.max_caption_words})",
        )
    if not (0 <= caption.start_s <= caption.end_s <= limits.max_call_s):
        raise CallLimitError(
            "caption_timing", f"Caption times {caption.start_s}..{caption.end_s} are invalid"
        )
