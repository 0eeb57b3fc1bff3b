"""Live captions from a stream of log-mel frames: revisable partials, then finalized words.

Whisper is not a streaming model: it decodes whole (padded) 30 s windows. The standard way to
caption live with it (Macháček et al., "Turning Whisper into Real-Time Transcription System",
2023, the ``whisper_streaming`` project) is to re-decode a growing buffer of recent audio every
fraction of a second and to commit only what two consecutive decodes agree on.

Theory of operation (``StreamingTranscriber``, sans-IO: ``push`` and ``finish`` do the decoding
synchronously; the caller runs them off its event loop):

- Every pushed frame goes through the voice-activity detector (:mod:`media.vad`). The stream is
  ``IDLE`` until the VAD hears speech: then only ``pre_roll_s`` of features are kept, and
  nothing is decoded, so silence and low noise cannot make Whisper hallucinate a caption.
- On speech onset the state becomes ``SPEAKING``: the buffer grows, and once ``min_chunk_s`` of
  new audio with speech in it has arrived, the whole buffer is decoded again
  (``condition_on_previous_text=False``, no prompt: each decode stands alone, so one bad window
  cannot poison the next).
- *LocalAgreement-2*: the longest common prefix of the last two hypotheses (words after the last
  committed one) is committed, as ``FinalWords`` with absolute times; the rest of the latest
  hypothesis is the revisable ``PartialCaption``. Committed words never change.
- *Speech offset*: as soon as the VAD says the speech stopped (after its hangover), a live
  stream (pushes shorter than ``catch_up_s``) decodes the buffer, whatever ``min_chunk_s``
  says; if nothing but silence follows, that decode is the utterance's last, so its words are
  final the moment the end-of-utterance silence is over, without another decode then (a
  decode took 0.3-0.5 s of the caption latency).
- After ``end_of_utterance_s`` of VAD silence the utterance ends: the buffer is decoded one last
  time if speech came after the latest decode, everything still pending is committed, an
  ``UtteranceEnd`` says no later word starts before that time (a cue builder may close its
  cue), and the stream is ``IDLE`` again.
- *Left context*: Whisper decodes a sentence much better with the sentence before it in the
  same window (ten codec-decoded Harvard sentences: WER 0.054 with each utterance decoded
  alone, 0.014 with this rule). So at an utterance end the buffer keeps up to
  ``context_s`` of its latest audio, cut at the start of a committed word, and the next
  utterance is decoded after it; its words are known as committed (by time, and by text at the
  head of a hypothesis) and never reported again. The context is dropped after
  ``context_gap_s`` of silence: a turn that starts after a long pause has no use for it, and
  Whisper places the first word of a window within its first second.
- *Catching up*: a listener that fell behind gets a long chunk at once, holding several
  utterances. Decoding each at its end would cost one Whisper window per utterance, and a
  window costs about the same for 3 s of speech as for 20 s; so when at least ``catch_up_s``
  of audio is already here after an utterance end and the next utterance fits in the buffer
  (``max_buffer_s``) after a pause no longer than ``context_gap_s``, the end is skipped and
  both are decoded together. Under load, the more a stream is behind, the more audio each
  decode covers, and the work per second of audio falls instead of piling up. Live chunks (a
  tenth of a second) never trigger it.
- While one utterance goes on, the buffer is trimmed once it exceeds ``trim_after_s``: features
  up to the end of the last committed sentence, or else up to the start of the last committed
  word, are dropped. If nothing gets committed and the buffer reaches ``max_buffer_s``, the
  latest hypothesis but its last word is committed by force, so the buffer stays bounded.
- *A sender that skips silence* (DTX, :mod:`media.call_sender`): ``push_silence`` moves the
  timeline over a gap as if silent frames were pushed (the first seconds really are, at the
  quietest level heard, so the rules above apply unchanged; the rest only moves the clock),
  and ``end_of_speech`` takes the sender's end mark: the utterance ends at once, with no
  ``end_of_utterance_s`` wait, if this stream's own VAD hears silence too (a guard against a
  sender that says so mid-word). The speech-offset decode has usually run already, so the
  mark finalizes without another decode.
- ``finish`` ends the stream like an utterance end; later calls raise ``StreamFinishedError``.
  A decoding failure puts the object in ``ERROR``: it re-raises, and every later call refuses.

- *Temperature fallback*: a decode whose words become final (at the speech offset and the
  utterance end) climbs the transcriber's temperature ladder when its text loops (compression
  ratio above 2.4) or its average log-probability is below -1, as ``transcribe`` does; the
  decodes in between, which only show partials and feed LocalAgreement, stop at the first
  temperature. A greedy decode that loops then costs a second decode, and only then.

Decoding uses the transcriber's ``DecodeOptions`` with ``condition_on_previous_text=False``,
``word_timestamps=True``, no prompt or prefix forced on, and *no second no-speech gate*
(``no_speech_threshold=None``): faster-whisper drops a window whose ``no_speech_prob`` is above
0.6 while its ``avg_logprob`` is below -1, and a short utterance of a high-pitched, fast voice
decoded with little context sits right there (tuning set: 0.5-0.7 and -1.1 to -1.8), so whole
sentences vanished from the captions (issue 16) while the offline captioner, with a whole 30 s
of speech per window, stays under the gate. Nothing reaches Whisper that the VAD did not call
speech, so the gate could only throw speech away; ``tests/test_streaming_asr_lost_speech.py``
holds two such sentences, lost before.

What each rule costs and buys (issue 16; tiny.en int8 greedy, 2 busy cores, tuning set
``simulations/tuning_sets/``). A decode costs one Whisper encoder pass over a padded 30 s window
(about 0.45 CPU s, whatever the buffer holds: CTranslate2's Whisper encoder only takes 3000
frames) plus a few greedy tokens and the word alignment (a tenth of that); batching eight
windows into one encoder call measured 0.56 CPU s a window, no saving on a CPU, so concurrent
calls are not batched. Work is therefore the number of decodes: one per ``min_chunk_s`` of
speech (partials and LocalAgreement) plus one per utterance end. Tried and measured, not kept:
a prompt of the last 30 committed words instead of audio context (WER 0.23 -> 1.4 on the tuning
set: greedy decoding loops on the prompt); committing only at the utterance end (0.23 -> 0.27:
the final decode alone loops on some voices); beam 5 for the final decode (0.36 -> 0.39 on the
four hardest tuning voices, +8 % CPU).
Session 5, same tuning set with the sender's DTX (figures in the issue 16 note): the fallback on
final decodes 0.243 -> 0.215 (+11 % CPU, decodes that loop only). Whole-recording decodes of the
same codec features scored 0.05 on a voice where the stream scored 0.43, so more left context
was tried (20 s across pauses up to 3 s, a decode every 3 s): tuning 0.215 -> 0.181, but on the
evaluation set no better (0.149 -> 0.153) with a later final decode (CPU-clock latency p50
1.05 -> 1.65 s), so the call keeps 5 s (``daemon.call_models.CALL_STREAMING``). Committing a
sentence at the speech offset when Whisper's text ends it (instead of at the utterance end) cut
the tuning CPU-clock latency p50 1.41 -> 1.26 s but cost WER 0.181 -> 0.201; not kept.

Time: audio time is frame index / 100 from the first frame pushed. Each ``FinalWords`` carries
``committed_at_s``, the caller's clock when the words were committed (``now_s`` given to ``push``
plus the decode time the injected clock measured), so "end of utterance -> finalized caption"
latency is ``committed_at_s`` minus the wall time of the word's audio end.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from media.asr import FeatureTranscriber, Word
from media.errors import MediaError, StreamFinishedError
from media.features import FRAMES_PER_SECOND, N_MELS, FloatArray
from media.vad import EnergyVad, VadSettings, as_feature_chunk

# How many committed words a new hypothesis may repeat at its start (whisper_streaming's 5).
_MAX_OVERLAP_WORDS: Final = 5
# generate_segments treats the last frame as padding; a buffer shorter than this has no content.
_MIN_DECODE_FRAMES: Final = 2
_SENTENCE_END: Final = re.compile(r"[.!?]$")
# Whisper's normalised log-mel of digital silence heard alone: (log10(1e-10) + 4) / 4.
_DIGITAL_SILENCE: Final = -1.5


class StreamingAsrError(MediaError):
    """A streaming transcriber was used after a failure put it in its error state."""


@dataclass(frozen=True, kw_only=True)
class StreamingSettings:
    """How often to decode, when an utterance ends, and how long the buffer may grow."""

    min_chunk_s: float = 1.0
    end_of_utterance_s: float = 0.5
    pre_roll_s: float = 0.3
    trim_after_s: float = 10.0
    max_buffer_s: float = 20.0
    context_s: float = 5.0
    context_gap_s: float = 2.0
    catch_up_s: float = 2.0
    vad: VadSettings = field(default_factory=VadSettings)

    def __post_init__(self) -> None:
        names = ("min_chunk_s", "end_of_utterance_s", "pre_roll_s", "context_gap_s", "catch_up_s")
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 10.0):
                raise ValueError(f"{name} must be in [0, 10] s, got {value}")
        if self.min_chunk_s < 0.1:
            raise ValueError(f"min_chunk_s must be >= 0.1 s, got {self.min_chunk_s}")
        if self.end_of_utterance_s < 0.1:
            raise ValueError(f"end_of_utterance_s must be >= 0.1 s, got {self.end_of_utterance_s}")
        # One Whisper window is 30 s: a longer buffer would be decoded as two windows.
        if not (math.isfinite(self.max_buffer_s) and 2.0 <= self.max_buffer_s <= 30.0):
            raise ValueError(f"max_buffer_s must be in [2, 30] s, got {self.max_buffer_s}")
        if not (math.isfinite(self.trim_after_s) and self.min_chunk_s < self.trim_after_s) or (
            self.trim_after_s >= self.max_buffer_s
        ):
            raise ValueError(
                f"trim_after_s must be between min_chunk_s and max_buffer_s, got "
                f"{self.trim_after_s}"
            )
        # The context is cut from one buffer, which is at most max_buffer_s long.
        if not (math.isfinite(self.context_s) and 0.0 <= self.context_s <= 30.0):
            raise ValueError(f"context_s must be in [0, 30] s, got {self.context_s}")

    def frames(self, seconds: float) -> int:
        return round(seconds * FRAMES_PER_SECOND)


@dataclass(frozen=True)
class PartialCaption:
    """The revisable tail after the committed words; ``text == ""`` clears the display."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class FinalWords:
    """Words committed for good, times in seconds from the stream start, in order.

    ``committed_at_s`` is the caller's clock when they were committed; ``stream_s`` how much
    audio had been pushed by then.
    """

    words: tuple[Word, ...]
    committed_at_s: float
    stream_s: float

    @property
    def text(self) -> str:
        return "".join(word.word for word in self.words).strip()


@dataclass(frozen=True)
class UtteranceEnd:
    """The utterance is over: no later word starts before ``no_word_before_s``."""

    no_word_before_s: float
    committed_at_s: float


CaptionEvent = PartialCaption | FinalWords | UtteranceEnd


class StreamState(enum.Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    FINISHED = "finished"
    ERROR = "error"


def _comparable(text: str) -> str:
    """A word as LocalAgreement compares it when matching against committed words."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(char for char in text if unicodedata.category(char)[0] in "LN")


class LocalAgreement:
    """LocalAgreement-2 over word hypotheses with absolute times (whisper_streaming's
    ``HypothesisBuffer``): what the previous and the new hypothesis share as a prefix is final.

    Words already committed are recognised in a new hypothesis by time (ending by the last
    committed end) and by text (a repeat of the last few committed words at its start), and
    left out of the comparison.
    """

    def __init__(self) -> None:
        self._last_committed_end_s = 0.0
        # Committed words still inside the audio buffer, to drop their repetition at the start
        # of the next hypothesis.
        self._committed_in_buffer: list[Word] = []
        self._pending: list[Word] = []

    @property
    def pending(self) -> tuple[Word, ...]:
        """The uncommitted tail of the latest hypothesis (what a partial caption shows)."""
        return tuple(self._pending)

    @property
    def committed_in_buffer(self) -> tuple[Word, ...]:
        return tuple(self._committed_in_buffer)

    @property
    def last_committed_end_s(self) -> float:
        return self._last_committed_end_s

    def _fresh(self, hypothesis: Sequence[Word]) -> list[Word]:
        """The words of ``hypothesis`` not already committed."""
        # By time: a word that ends by the last committed end was heard before. (Not by start,
        # as whisper_streaming does: after a trim, the first word of the buffer is stamped at
        # the buffer start, inside the committed word before it.)
        words = [w for w in hypothesis if w.end_s > self._last_committed_end_s]
        # By text: a committed word heard again with its end a little later (times jitter by
        # a few frames between decodes) is still at the head of the hypothesis.
        committed = self._committed_in_buffer
        if words and committed:
            for size in range(min(len(committed), len(words), _MAX_OVERLAP_WORDS), 0, -1):
                tail = [_comparable(w.word) for w in committed[-size:]]
                head = [_comparable(w.word) for w in words[:size]]
                if tail == head:
                    words = words[size:]
                    break
        return words

    def update(self, hypothesis: Sequence[Word]) -> list[Word]:
        """Take a new hypothesis; return the words it commits (shared prefix with the last)."""
        fresh = self._fresh(hypothesis)
        agreed = 0
        for old, new in zip(self._pending, fresh, strict=False):
            if old.word.strip() != new.word.strip():
                break
            agreed += 1
        self._pending = fresh[agreed:]
        return self._commit(fresh[:agreed])

    def commit_all(self, hypothesis: Sequence[Word] | None, *, keep_last: int = 0) -> list[Word]:
        """Commit ``hypothesis`` (or the pending words) whole, except its last ``keep_last``."""
        fresh = self._fresh(hypothesis) if hypothesis is not None else list(self._pending)
        cut = max(0, len(fresh) - keep_last)
        self._pending = fresh[cut:]
        return self._commit(fresh[:cut])

    def _commit(self, words: Sequence[Word]) -> list[Word]:
        committed: list[Word] = []
        for word in words:
            # Whisper's word times jitter between decodes: keep committed times monotonic.
            start = max(word.start_s, self._last_committed_end_s)
            end = max(word.end_s, start)
            committed.append(dataclasses.replace(word, start_s=start, end_s=end))
            self._last_committed_end_s = end
        self._committed_in_buffer.extend(committed)
        return committed

    def forget_before(self, time_s: float) -> None:
        """The audio before ``time_s`` has left the buffer: so have its committed words."""
        self._committed_in_buffer = [w for w in self._committed_in_buffer if w.end_s > time_s]

    def reset_utterance(self, *, keep_from_s: float | None = None) -> None:
        """The utterance is over: nothing is pending. With ``keep_from_s``, the audio from that
        time stays in the buffer as context, and so do its committed words; without, the next
        utterance starts from empty audio and there is nothing to match against any more."""
        self._pending = []
        if keep_from_s is None:
            self._committed_in_buffer = []
        else:
            self.forget_before(keep_from_s)


class StreamingTranscriber:
    """Turns pushed log-mel chunks into caption events (module docstring).

    ``clock`` measures decode time (seconds, monotonic); it is also the commit time when
    ``push`` is given no ``now_s``.
    """

    def __init__(
        self,
        transcriber: FeatureTranscriber,
        *,
        settings: StreamingSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transcriber = transcriber
        self._settings = settings if settings is not None else StreamingSettings()
        self._options = dataclasses.replace(
            transcriber.options,
            condition_on_previous_text=False,
            word_timestamps=True,
            initial_prompt=None,
            prefix=None,
            # The VAD decides what is speech (module docstring, "no second no-speech gate").
            no_speech_threshold=None,
        )
        # Decodes that only show partials (and feed LocalAgreement) stop at the first
        # temperature; those whose words become final climb the fallback ladder when the text
        # loops or the log-probability is low (module docstring, "temperature fallback").
        self._partial_options = dataclasses.replace(
            self._options, temperatures=self._options.temperatures[:1]
        )
        self._clock = clock
        self._vad = EnergyVad(self._settings.vad)
        self._state = StreamState.IDLE
        self._buffer: FloatArray = np.empty((N_MELS, 0), dtype=np.float32)
        self._buffer_start_frame = 0
        self._frames_pushed = 0
        self._frames_since_decode = 0
        self._speech_since_decode = False
        self._silence_run = 0
        # The buffer starts with the previous utterance's tail (module docstring, left context),
        # and how much silence has followed that utterance.
        self._has_context = False
        self._idle_frames = 0
        self._agreement = LocalAgreement()
        self._partial = PartialCaption(text="", start_s=0.0, end_s=0.0)
        self._decode_count = 0
        self._sender_ends = 0
        self._partials = True
        # The lowest feature value pushed so far: the level of silence (push_silence).
        self._quietest: float | None = None
        # Caller's time at the start of this push, and the clock reading then.
        self._push_now_s = 0.0
        self._push_clock_s = 0.0

    @property
    def settings(self) -> StreamingSettings:
        return self._settings

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def decode_count(self) -> int:
        """How many times the buffer has been decoded so far."""
        return self._decode_count

    @property
    def sender_ends(self) -> int:
        """Utterances ended early by :meth:`end_of_speech`."""
        return self._sender_ends

    @property
    def stream_s(self) -> float:
        """Audio pushed so far, in seconds."""
        return self._frames_pushed / FRAMES_PER_SECOND

    @property
    def backlog_s(self) -> float:
        """Speech pushed since the last decode, in seconds (0 while idle): audio whose words the
        stream still owes. A cheap reading for admission control; it does not count audio the
        caller holds before pushing it."""
        if self._state is not StreamState.SPEAKING:
            return 0.0
        return self._frames_since_decode / FRAMES_PER_SECOND

    @property
    def buffer_s(self) -> float:
        """Audio currently held for re-decoding, in seconds."""
        return int(self._buffer.shape[1]) / FRAMES_PER_SECOND

    def push(
        self, features: npt.ArrayLike, *, now_s: float | None = None, partials: bool = True
    ) -> list[CaptionEvent]:
        """Add normalised log-mel frames ``(80, k)``; return the caption events they cause.

        ``partials=False`` (a recognizer shared by calls that are waiting for it): no decode
        every ``min_chunk_s`` for partial captions, only where words become final (speech
        offset, utterance end) or the buffer must be trimmed (module docstring, load)."""
        self._check_usable("push")
        chunk = as_feature_chunk(features)
        self._begin_call(now_s)
        self._partials = partials
        try:
            return self._push(chunk)
        except BaseException:
            self._state = StreamState.ERROR
            raise

    def finish(self, *, now_s: float | None = None) -> list[CaptionEvent]:
        """End of stream: finalize whatever is pending; the object accepts nothing after."""
        self._check_usable("finish")
        self._begin_call(now_s)
        try:
            events = self._end_utterance() if self._state is StreamState.SPEAKING else []
        except BaseException:
            self._state = StreamState.ERROR
            raise
        self._state = StreamState.FINISHED
        return events

    def push_silence(self, frames: int, *, now_s: float | None = None) -> list[CaptionEvent]:
        """``frames`` log-mel frames of silence that the caller does not hand over (a sender's
        discontinuous transmission): the stream's timeline moves on as if they were pushed.

        The first few seconds are pushed as real frames at the quietest level heard so far
        (what digital silence looks like after the front end's ``max - 8`` clamp), so the
        VAD, the utterance end and the left-context rules see them as before; past
        ``_silence_frames_pushed`` the stream is idle with no context left, and the rest only
        moves the clock (a gap of an hour costs nothing)."""
        self._check_usable("push_silence")
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        self._begin_call(now_s)
        try:
            pushed = min(frames, self._silence_frames_pushed())
            level = self._quietest if self._quietest is not None else _DIGITAL_SILENCE
            events = self._push(np.full((N_MELS, pushed), level, dtype=np.float32))
            rest = frames - pushed
            if rest:
                # Idle with no context (the silence pushed saw to it): the buffer holds only
                # the pre-roll's silence, which may move in time with the clock.
                self._frames_pushed += rest
                self._buffer_start_frame += rest
                self._idle_frames += rest
            return events
        except BaseException:
            self._state = StreamState.ERROR
            raise

    def end_of_speech(self, *, now_s: float | None = None) -> list[CaptionEvent]:
        """The sender's VAD says the speech ended with the frames pushed so far: end the
        utterance now instead of after ``end_of_utterance_s`` of silence. A guard against a
        sender that says so mid-word: only if this stream's own VAD hears silence too (else
        the mark is ignored, and the silence timer ends the utterance as usual)."""
        self._check_usable("end_of_speech")
        if self._state is not StreamState.SPEAKING or self._silence_run == 0:
            return []
        self._begin_call(now_s)
        try:
            self._sender_ends += 1
            return self._end_utterance()
        except BaseException:
            self._state = StreamState.ERROR
            raise

    def _silence_frames_pushed(self) -> int:
        settings = self._settings
        # The VAD's hangover, the utterance end, then an idle stretch that drops the context.
        seconds = settings.vad.hangover_s + settings.end_of_utterance_s + settings.context_gap_s
        return settings.frames(seconds) + 2

    def _check_usable(self, verb: str) -> None:
        if self._state is StreamState.FINISHED:
            raise StreamFinishedError(f"StreamingTranscriber.{verb}() after finish()")
        if self._state is StreamState.ERROR:
            raise StreamingAsrError(
                f"StreamingTranscriber.{verb}() after an earlier failure: start a new stream"
            )

    def _begin_call(self, now_s: float | None) -> None:
        self._push_clock_s = self._clock()
        self._push_now_s = self._push_clock_s if now_s is None else now_s

    def _now(self) -> float:
        return self._push_now_s + (self._clock() - self._push_clock_s)

    def _push(self, chunk: FloatArray) -> list[CaptionEvent]:
        if chunk.shape[1]:
            low = float(chunk.min())
            self._quietest = low if self._quietest is None else min(self._quietest, low)
        speech = self._vad.process(chunk).speech
        events: list[CaptionEvent] = []
        position = 0
        n_frames = chunk.shape[1]
        end_frames = self._settings.frames(self._settings.end_of_utterance_s)
        while position < n_frames:
            if self._state is StreamState.IDLE:
                onsets = np.flatnonzero(speech[position:])
                stop = n_frames if onsets.size == 0 else position + int(onsets[0])
                self._append(chunk[:, position:stop], speech[position:stop])
                self._idle_frames += stop - position
                self._keep_pre_roll()
                position = stop
                if onsets.size:
                    self._state = StreamState.SPEAKING
                    self._silence_run = 0
                continue
            # SPEAKING: find where the silence run reaches the end-of-utterance length.
            end, self._silence_run = _utterance_end(speech, position, self._silence_run, end_frames)
            ended = end is not None
            stop = end if end is not None else n_frames
            self._append(chunk[:, position:stop], speech[position:stop])
            position = stop
            if ended:
                onset = self._next_onset_to_join(speech, position)
                if onset is None:
                    events.extend(self._end_utterance())
                else:
                    # Behind (module docstring, catching up): one decode for both utterances.
                    self._append(chunk[:, position:onset], speech[position:onset])
                    position = onset
                    self._silence_run = 0
        if self._state is StreamState.SPEAKING:
            if self._at_speech_offset(n_frames):
                events.extend(self._decode_and_commit(final=True))
            elif self._decode_due():
                events.extend(self._decode_and_commit(final=False))
        return events

    def _at_speech_offset(self, chunk_frames: int) -> bool:
        """The speech just stopped (the VAD's hangover included) and was not decoded yet: a
        decode now is what the utterance end would decode, minus silence (module docstring).
        Live pushes only: a stream that is catching up would often join the next utterance
        to this one and decode again, so there the early decode is wasted work."""
        live = chunk_frames < self._settings.frames(self._settings.catch_up_s)
        return live and self._speech_since_decode and self._silence_run > 0

    def _next_onset_to_join(self, speech: npt.NDArray[np.bool_], position: int) -> int | None:
        """Where the next utterance starts, if the stream is catching up and that utterance
        fits in the buffer with the one that just ended; else None."""
        settings = self._settings
        if speech.shape[0] - position < settings.frames(settings.catch_up_s):
            return None
        onsets = np.flatnonzero(speech[position:])
        if onsets.size == 0:
            return None
        onset = position + int(onsets[0])
        if onset - position > settings.frames(settings.context_gap_s):
            return None  # a long pause: a turn of its own, as the context rule has it
        # The next utterance ends where its silence run reaches end_of_utterance_s, or with
        # the chunk.
        end_frames = settings.frames(settings.end_of_utterance_s)
        end, _ = _utterance_end(speech, onset, 0, end_frames)
        end = end if end is not None else speech.shape[0]
        if self._buffer.shape[1] + (end - position) > settings.frames(settings.max_buffer_s):
            return None
        return onset

    def _append(self, frames: FloatArray, speech: npt.NDArray[np.bool_]) -> None:
        if frames.shape[1] == 0:
            return
        self._buffer = np.concatenate([self._buffer, frames], axis=1)
        self._frames_pushed += frames.shape[1]
        self._frames_since_decode += frames.shape[1]
        self._speech_since_decode = self._speech_since_decode or bool(speech.any())

    def _keep_pre_roll(self) -> None:
        self._frames_since_decode = 0
        self._speech_since_decode = False
        if self._has_context:
            if self._idle_frames <= self._settings.frames(self._settings.context_gap_s):
                return  # context, then the silence so far
            self._has_context = False
            self._agreement.reset_utterance()
        keep = self._settings.frames(self._settings.pre_roll_s)
        self._drop_frames(max(0, self._buffer.shape[1] - keep))

    def _keep_context(self) -> None:
        """At an utterance end, keep up to ``context_s`` of the buffer, from a committed word's
        start (preferably a sentence's first word), and drop the rest."""
        buffer_end_s = (self._buffer_start_frame + self._buffer.shape[1]) / FRAMES_PER_SECOND
        earliest_s = buffer_end_s - self._settings.context_s
        committed = self._agreement.committed_in_buffer
        candidates = [index for index, word in enumerate(committed) if word.start_s >= earliest_s]
        sentence_starts = [
            index
            for index in candidates
            if index == 0 or _SENTENCE_END.search(committed[index - 1].word.strip())
        ]
        chosen = sentence_starts or candidates
        if self._settings.context_s <= 0.0 or not chosen:
            self._has_context = False
            self._agreement.reset_utterance()
            self._drop_frames(self._buffer.shape[1])
            return
        keep_from_s = committed[chosen[0]].start_s
        cut_frame = math.floor(keep_from_s * FRAMES_PER_SECOND)
        self._drop_frames(min(cut_frame - self._buffer_start_frame, self._buffer.shape[1]))
        self._agreement.reset_utterance(keep_from_s=keep_from_s)
        self._has_context = True

    def _drop_frames(self, count: int) -> None:
        if count <= 0:
            return
        self._buffer = self._buffer[:, count:]
        self._buffer_start_frame += count

    def _decode_due(self) -> bool:
        if not self._speech_since_decode:
            return False
        if not self._partials:
            return self.buffer_s >= self._settings.trim_after_s
        return self._frames_since_decode >= self._settings.frames(self._settings.min_chunk_s)

    def _decode(self, *, final: bool) -> list[Word]:
        self._frames_since_decode = 0
        self._speech_since_decode = False
        if self._buffer.shape[1] < _MIN_DECODE_FRAMES:
            return []
        options = self._options if final else self._partial_options
        transcript = self._transcriber.transcribe_features(self._buffer, options=options)
        self._decode_count += 1
        offset = self._buffer_start_frame / FRAMES_PER_SECOND
        return [
            dataclasses.replace(w, start_s=w.start_s + offset, end_s=w.end_s + offset)
            for w in transcript.words
        ]

    def _decode_and_commit(self, *, final: bool) -> list[CaptionEvent]:
        hypothesis = self._decode(final=final)
        committed = self._agreement.update(hypothesis)
        if not committed and self.buffer_s >= self._settings.max_buffer_s:
            # LocalAgreement has not converged in a whole buffer: trust the latest decode.
            committed = self._agreement.commit_all(hypothesis, keep_last=1)
            if not committed:
                # Nothing intelligible in a full buffer: keep only the newest audio.
                self._drop_frames(
                    self._buffer.shape[1] - self._settings.frames(self._settings.trim_after_s)
                )
        events: list[CaptionEvent] = []
        if committed:
            events.append(self._final(committed))
        self._trim_buffer()
        events.extend(self._partial_event(self._agreement.pending))
        return events

    def _trim_buffer(self) -> None:
        if self.buffer_s < self._settings.trim_after_s:
            return
        committed = self._agreement.committed_in_buffer
        if not committed:
            return
        # Whisper's word ends are only good to a tenth of a second or so, and a cut inside the
        # next word makes it unrecognisable. A sentence end is usually followed by a pause, so
        # cut there; otherwise cut at the *start* of the last committed word, which the next
        # hypothesis then repeats and LocalAgreement drops as already committed.
        cut_s = committed[-1].start_s
        for word in reversed(committed):
            if _SENTENCE_END.search(word.word.strip()):
                cut_s = word.end_s
                break
        cut_frame = math.ceil(cut_s * FRAMES_PER_SECOND)
        self._drop_frames(min(cut_frame - self._buffer_start_frame, self._buffer.shape[1]))
        self._agreement.forget_before(cut_s)

    def _end_utterance(self) -> list[CaptionEvent]:
        # Only silence since the last decode (the one at the speech offset): its pending words
        # are the final ones, and a decode of the same speech plus silence would only add delay.
        hypothesis = self._decode(final=True) if self._speech_since_decode else None
        committed = self._agreement.commit_all(hypothesis)
        events: list[CaptionEvent] = []
        if committed:
            events.append(self._final(committed))
        events.extend(self._partial_event([]))
        end_s = max(self.stream_s, self._agreement.last_committed_end_s)
        events.append(UtteranceEnd(no_word_before_s=end_s, committed_at_s=self._now()))
        self._keep_context()
        self._idle_frames = 0
        self._frames_since_decode = 0
        self._speech_since_decode = False
        self._silence_run = 0
        self._state = StreamState.IDLE
        return events

    def _final(self, words: Sequence[Word]) -> FinalWords:
        return FinalWords(words=tuple(words), committed_at_s=self._now(), stream_s=self.stream_s)

    def _partial_event(self, pending: Sequence[Word]) -> list[CaptionEvent]:
        if pending:
            partial = PartialCaption(
                text="".join(w.word for w in pending).strip(),
                start_s=pending[0].start_s,
                end_s=pending[-1].end_s,
            )
        else:
            partial = PartialCaption(text="", start_s=self.stream_s, end_s=self.stream_s)
        if partial.text == self._partial.text and partial.start_s == self._partial.start_s:
            return []
        had_text = bool(self._partial.text)
        self._partial = partial
        if not partial.text and not had_text:
            return []
        return [partial]


def _utterance_end(
    speech: npt.NDArray[np.bool_], start: int, silence_run: int, end_frames: int
) -> tuple[int | None, int]:
    """Scan the VAD flags from ``start`` with ``silence_run`` frames of silence already counted:
    the frame index just after the run reaches ``end_frames`` (None if it does not within
    ``speech``), and the run length where the scan stopped."""
    for k in range(start, speech.shape[0]):
        silence_run = 0 if speech[k] else silence_run + 1
        if silence_run >= end_frames:
            return k + 1, silence_run
    return None, silence_run
