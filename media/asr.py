"""Speech recognition from log-mel features, with faster-whisper's own decoding loop.

The receiver of a call has log-mel frames (decoded by the sender's codec), not audio, so it
cannot call ``WhisperModel.transcribe``. ``FeatureTranscriber`` does what ``transcribe`` does
after its front end (faster-whisper 1.2.1, ``transcribe.py``): build a ``Tokenizer`` and a
``TranscriptionOptions`` (with ``get_suppressed_tokens``) and run
``WhisperModel.generate_segments`` over the *whole* feature array. That loop cuts 30 s windows
and zero-pads each to 3000 frames itself (``pad_or_trim``); Whisper was trained on padded 30 s
windows, and feeding it short windows instead ruins accuracy, so callers pass everything they
have and let the loop window it.

The array layout is ``log_mel``'s: ``n`` samples give ``n // 160 + 1`` frames, and the loop
treats the last frame as padding (``content_frames = frames - 1``), exactly as for
``transcribe``. Voice-activity filtering is not offered here: faster-whisper's VAD runs on
audio, which a feature stream does not have.

``generate_segments`` is a semi-internal API, which is why faster-whisper is pinned exactly.
Its exceptions (CTranslate2 ``RuntimeError``, tokenizer ``ValueError``) are translated here.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (must precede faster_whisper / ctranslate2)

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

from media.errors import (
    InvalidFeaturesError,
    ModelLoadError,
    TranscriptionError,
    UnsupportedLanguageError,
)
from media.features import HOP_LENGTH, N_MELS, SAMPLE_RATE, FloatArray, log_mel

# faster-whisper's defaults for punctuation merged into neighbouring words; the full-width
# marks are deliberate (CJK punctuation).
PREPEND_PUNCTUATIONS: Final = "\"'“¿([{-"
APPEND_PUNCTUATIONS: Final = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001
WHISPER_TEMPERATURES: Final = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """Decoding settings; names and defaults follow ``WhisperModel.transcribe``.

    Two defaults differ on purpose: ``condition_on_previous_text`` is off (a live caption
    stream must not let one bad window poison the next) and ``word_timestamps`` is on (caption
    cues are cut at word boundaries). ``language=None`` detects the language (multilingual
    models only; an English-only model always decodes English).
    """

    language: str | None = "en"
    task: str = "transcribe"
    beam_size: int = 5
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperatures: tuple[float, ...] = WHISPER_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = False
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | None = None
    prefix: str | None = None
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = (-1,)
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    word_timestamps: bool = True
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    max_new_tokens: int | None = None
    hallucination_silence_threshold: float | None = None
    hotwords: str | None = None

    def __post_init__(self) -> None:
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if self.beam_size < 1 or self.best_of < 1:
            raise ValueError("beam_size and best_of must be >= 1")
        if not self.patience > 0 or not self.length_penalty > 0:
            raise ValueError("patience and length_penalty must be > 0")
        if not self.temperatures or any(
            not (math.isfinite(t) and t >= 0) for t in self.temperatures
        ):
            raise ValueError(f"temperatures must be finite and >= 0, got {self.temperatures}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.max_initial_timestamp < 0:
            raise ValueError("max_initial_timestamp must be >= 0")


@dataclass(frozen=True)
class Word:
    """One word with its time span (seconds from the start of the features) and confidence."""

    word: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """One decoded segment. ``text`` is Whisper's, leading space included."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Transcript:
    language: str
    duration_s: float
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        """All segment texts, stripped and joined by single spaces."""
        return " ".join(part for part in (s.text.strip() for s in self.segments) if part)

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(word for segment in self.segments for word in segment.words)


@dataclass(frozen=True)
class LanguageGuess:
    """Whisper's language identification: the top language, its probability, the runner-up."""

    language: str
    probability: float
    runner_up: str | None = None
    runner_up_probability: float = 0.0


#: Identification looks at most at this many 30 s windows from the start of a recording.
IDENTIFICATION_WINDOWS: Final = 3


class FeatureTranscriber:
    """Transcribes Whisper log-mel arrays with a loaded ``WhisperModel``.

    The model is injected (load it once with ``media.models.load_whisper``); the object holds
    no per-call state, so one instance may serve several threads as CTranslate2 allows.
    """

    def __init__(self, model: WhisperModel, *, options: DecodeOptions | None = None) -> None:
        extractor = model.feature_extractor
        n_mels = int(extractor.mel_filters.shape[0])
        if (n_mels, extractor.sampling_rate, extractor.hop_length) != (
            N_MELS,
            SAMPLE_RATE,
            HOP_LENGTH,
        ):
            raise ModelLoadError(
                f"this Whisper model expects {n_mels} mel bins at {extractor.sampling_rate} Hz"
                f" / hop {extractor.hop_length}; parley's front end makes {N_MELS} at"
                f" {SAMPLE_RATE} Hz / hop {HOP_LENGTH}"
            )
        self._model = model
        self._options = options if options is not None else DecodeOptions()

    @property
    def model(self) -> WhisperModel:
        return self._model

    @property
    def options(self) -> DecodeOptions:
        return self._options

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def identify_language(
        self, mel: npt.ArrayLike, *, windows: int = IDENTIFICATION_WINDOWS
    ) -> LanguageGuess:
        """Which language the speech in ``mel`` is in (multilingual models only).

        Whisper's own identification: the language-token distribution after the encoder, over
        up to ``windows`` 30 s windows from the start (faster-whisper's ``detect_language``).
        """
        if not self.is_multilingual:
            raise UnsupportedLanguageError(
                "the loaded Whisper model is English-only; it cannot identify a language"
            )
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        features = _as_features(mel)
        try:
            language, probability, ranked = self._model.detect_language(
                features=features[:, :-1] if features.shape[1] > 1 else features,
                language_detection_segments=windows,
            )
        except (RuntimeError, ValueError) as error:
            detail = " ".join(str(error).split())
            raise TranscriptionError(f"Whisper language identification failed: {detail}") from error
        ordered = sorted(ranked, key=lambda item: -float(item[1]))
        others = [(str(code), float(p)) for code, p in ordered if str(code) != str(language)]
        return LanguageGuess(
            language=str(language),
            probability=float(probability),
            runner_up=others[0][0] if others else None,
            runner_up_probability=others[0][1] if others else 0.0,
        )

    def transcribe_audio(
        self, audio: npt.ArrayLike, *, options: DecodeOptions | None = None
    ) -> Transcript:
        """Transcribe a 16 kHz mono waveform through parley's own front end (``log_mel``)."""
        return self.transcribe_features(log_mel(audio), options=options)

    def transcribe_features(
        self,
        mel: npt.ArrayLike,
        *,
        options: DecodeOptions | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Transcribe a normalised log-mel array ``(80, frames)`` in ``log_mel``'s layout.

        Pass the whole utterance (any length): windowing and 30 s padding happen inside.
        ``on_progress`` hears, after each decoded segment, how many seconds of the features are
        transcribed (a long recording decodes for minutes).
        """
        features = _as_features(mel)
        chosen = options if options is not None else self._options
        try:
            language = self._resolve_language(features, chosen)
            tokenizer = Tokenizer(
                self._model.hf_tokenizer,
                self.is_multilingual,
                task=chosen.task,
                language=language,
            )
            faster_options = _transcription_options(chosen, tokenizer)
            decoded = []
            seconds = (features.shape[1] - 1) / (SAMPLE_RATE / HOP_LENGTH)
            for segment in self._model.generate_segments(
                features, tokenizer, faster_options, False
            ):
                decoded.append(segment)
                if on_progress is not None:
                    on_progress(min(float(segment.end), seconds))
        except UnsupportedLanguageError:
            raise
        except (RuntimeError, ValueError) as error:
            detail = " ".join(str(error).split())
            raise TranscriptionError(f"Whisper decoding failed: {detail}") from error
        content_frames = features.shape[1] - 1
        return Transcript(
            language=language,
            duration_s=content_frames / (SAMPLE_RATE / HOP_LENGTH),
            segments=tuple(_convert_segment(segment) for segment in decoded),
        )

    def _resolve_language(self, features: FloatArray, options: DecodeOptions) -> str:
        if not self.is_multilingual:
            # transcribe() silently falls back to English here; a caller asking an English-only
            # model for Portuguese has a configuration error and should hear about it.
            if options.language not in (None, "en"):
                raise UnsupportedLanguageError(
                    f"the loaded Whisper model is English-only; cannot transcribe"
                    f" {options.language!r}"
                )
            return "en"
        if options.language is None:
            detected, _probability, _all = self._model.detect_language(features=features)
            return str(detected)
        if options.language not in self._model.supported_languages:
            raise UnsupportedLanguageError(
                f"Whisper does not know the language code {options.language!r}"
            )
        return options.language


def _as_features(mel: npt.ArrayLike) -> FloatArray:
    array = np.asarray(mel)
    if array.ndim != 2 or array.shape[0] != N_MELS or array.shape[1] < 1:
        raise InvalidFeaturesError(
            f"log-mel features must have shape ({N_MELS}, frames >= 1), got {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidFeaturesError(f"log-mel features must be floating point, got {array.dtype}")
    features = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(features)):
        raise InvalidFeaturesError("log-mel features hold NaN or infinite values")
    return features


def _transcription_options(options: DecodeOptions, tokenizer: Tokenizer) -> Any:
    """The ``TranscriptionOptions`` that ``WhisperModel.transcribe`` would build."""
    suppress = list(options.suppress_tokens)
    return TranscriptionOptions(
        beam_size=options.beam_size,
        best_of=options.best_of,
        patience=options.patience,
        length_penalty=options.length_penalty,
        repetition_penalty=options.repetition_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        log_prob_threshold=options.log_prob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        compression_ratio_threshold=options.compression_ratio_threshold,
        condition_on_previous_text=options.condition_on_previous_text,
        prompt_reset_on_temperature=options.prompt_reset_on_temperature,
        temperatures=list(options.temperatures),
        initial_prompt=options.initial_prompt,
        prefix=options.prefix,
        suppress_blank=options.suppress_blank,
        suppress_tokens=get_suppressed_tokens(tokenizer, suppress) if suppress else suppress,
        without_timestamps=options.without_timestamps,
        max_initial_timestamp=options.max_initial_timestamp,
        word_timestamps=options.word_timestamps,
        prepend_punctuations=options.prepend_punctuations,
        append_punctuations=options.append_punctuations,
        multilingual=False,
        max_new_tokens=options.max_new_tokens,
        # generate_segments rewrites a string into a list in place: give it a fresh one.
        clip_timestamps="0",
        hallucination_silence_threshold=options.hallucination_silence_threshold,
        hotwords=options.hotwords,
    )


def _convert_segment(segment: Any) -> Segment:
    words = tuple(
        Word(
            word=str(word.word),
            start_s=float(word.start),
            end_s=float(word.end),
            probability=float(word.probability),
        )
        for word in (segment.words or ())
    )
    return Segment(
        start_s=float(segment.start),
        end_s=float(segment.end),
        text=str(segment.text),
        words=words,
        avg_logprob=float(segment.avg_logprob),
        no_speech_prob=float(segment.no_speech_prob),
    )
