"""Speech from libespeak-ng with the time of every phoneme (its phoneme events).

``media.tts`` runs the ``espeak-ng`` program, which returns audio only. Lip sync needs to know
when each phoneme sounds, so this module drives the same engine through its C library
(``libespeak-ng.so.1``, Debian package ``libespeak-ng1``, a dependency of ``espeak-ng``) in
synchronous mode with phoneme events on: each event carries the phoneme (IPA) and the sample
where it starts in the returned audio, so audio and timings come from one synthesis and agree
exactly.

The library keeps global state (voice, parameters, callback), so every synthesis holds one
process-wide lock. Voice traits (median pitch, speaking rate, :mod:`media.voice`) map to
espeak's pitch (0-99) and rate (words per minute) the way :class:`media.tts.EspeakSynthesizer`
maps them: the voice's own pitch is measured at two settings with the same estimator and
interpolated on a log-frequency scale; the rate is scaled by the ratio of rates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from media.dub.errors import SpeechTimingError
from media.features import SAMPLE_RATE, log_mel
from media.tts import resample
from media.voice import NoSpeechError, measure_voice_traits
from schemas.messages import VoiceTraits

__all__ = ["PhonemeTime", "TimedEspeak", "TimedSpeech"]

_LIBRARY: Final = "libespeak-ng.so.1"
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_PHONEME_EVENTS: Final = 0x0001
_INITIALIZE_PHONEME_IPA: Final = 0x0002
_EVENT_LIST_TERMINATED: Final = 0
_EVENT_PHONEME: Final = 7
_PARAMETER_RATE: Final = 1
_PARAMETER_PITCH: Final = 3
_POSITION_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_DEFAULT_WPM: Final = 175
_WPM_RANGE: Final = (80, 450)
_CALIBRATION_PITCHES: Final = (20, 80)
_MAX_RATIO: Final = 2.0
_MAX_TEXT_CHARS: Final = 5000
_CALIBRATION_TEXT: Final = {
    "en": "The quick brown fox jumps over the lazy dog, and the children laugh in the park.",
    "pt": "O rápido cachorro marrom pula sobre a cerca, e as crianças riem no parque.",
    "es": "El rápido zorro marrón salta sobre el perro perezoso, y los niños ríen en el parque.",
}

_lock = threading.Lock()


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    )


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True, slots=True)
class PhonemeTime:
    """One phoneme (IPA; ``""`` is a pause) from ``start_s`` to ``end_s`` in its speech."""

    phoneme: str
    start_s: float
    end_s: float


@dataclass(frozen=True, eq=False)
class TimedSpeech:
    """Mono float32 speech and its phonemes, on the speech's own clock."""

    samples: npt.NDArray[np.float32]
    sample_rate: int
    phonemes: tuple[PhonemeTime, ...]

    @property
    def duration_s(self) -> float:
        return int(self.samples.shape[0]) / self.sample_rate


class _Library:
    """The loaded library and its sample rate; initialised once per process."""

    _instance: _Library | None = None

    def __init__(self) -> None:
        try:
            self.lib: Any = ctypes.CDLL(_LIBRARY)
        except OSError as error:
            raise SpeechTimingError(
                f"cannot load {_LIBRARY} (Debian package espeak-ng): {error}"
            ) from error
        rate = int(
            self.lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                None,
                _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA,
            )
        )
        if rate <= 0:
            raise SpeechTimingError(f"espeak-ng failed to initialise (code {rate})")
        self.sample_rate = rate
        self.lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        self.lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Library:
        with _lock:  # one initialisation, even when two jobs start at once
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_synth(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._events.append((int(event.sample), event.id.decode("utf-8", "replace")))
            index += 1
        return 0

    def synthesize(self, text: str, voice: str, pitch: int, words_per_minute: int) -> TimedSpeech:
        encoded = text.encode("utf-8")
        self._chunks, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode("ascii", "replace")) != 0:
            raise SpeechTimingError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices)")
        self.lib.espeak_SetParameter(_PARAMETER_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(_PARAMETER_PITCH, pitch, 0)
        status = self.lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POSITION_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        self.lib.espeak_Synchronize()
        if status != 0:
            raise SpeechTimingError(f"espeak-ng failed on {text[:40]!r} (code {status})")
        samples = (
            np.concatenate(self._chunks).astype(np.float32) / 32768.0
            if self._chunks
            else np.zeros(0, dtype=np.float32)
        )
        return TimedSpeech(
            samples, self.sample_rate, _phonemes(self._events, samples.size, self.sample_rate)
        )


def _phonemes(events: list[tuple[int, str]], total: int, rate: int) -> tuple[PhonemeTime, ...]:
    result: list[PhonemeTime] = []
    for number, (start, name) in enumerate(events):
        end = events[number + 1][0] if number + 1 < len(events) else total
        if end > start:
            result.append(PhonemeTime(name, start / rate, min(end, total) / rate))
    return tuple(result)


def _language_key(language: str) -> str:
    return language.split("-", maxsplit=1)[0].split("_", maxsplit=1)[0].lower()


class TimedEspeak:
    """espeak-ng speech with phoneme times, in ``voice_name``, optionally in a speaker's voice."""

    def __init__(self, language: str, *, voice_name: str | None = None) -> None:
        self._library = _Library.get()
        self._language = language
        self._voice = (voice_name or language).lower().replace("_", "-")
        self._pitch_map: tuple[float, float] | None = None
        self._own_rate_wps: float | None = None
        with _lock:  # fail now, not after the transcription, when the voice does not exist
            self._library.synthesize("a", self._voice, 50, _DEFAULT_WPM)

    @property
    def language(self) -> str:
        return self._language

    def synthesize(
        self, text: str, *, voice: VoiceTraits | None = None, speed: float = 1.0
    ) -> TimedSpeech:
        """``text`` spoken ``speed`` times faster than the voice's (or the speaker's) rate."""
        cleaned = " ".join(text.split())
        if len(cleaned) > _MAX_TEXT_CHARS:
            raise SpeechTimingError(f"text of {len(cleaned)} characters is over {_MAX_TEXT_CHARS}")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be positive, got {speed}")
        pitch, words_per_minute = 50, float(_DEFAULT_WPM)
        if voice is not None:
            pitch = self._pitch_setting(voice.median_pitch_hz)
            words_per_minute = _DEFAULT_WPM * _ratio(voice.speaking_rate_wps, self._own_rate())
        wpm = int(min(max(round(words_per_minute * speed), _WPM_RANGE[0]), _WPM_RANGE[1]))
        return self._run(cleaned, pitch, wpm)

    @staticmethod
    def max_words_per_minute() -> int:
        return _WPM_RANGE[1]

    def _run(self, text: str, pitch: int, words_per_minute: int) -> TimedSpeech:
        with _lock:
            return self._library.synthesize(text, self._voice, pitch, words_per_minute)

    def _measure(self, text: str, pitch: int) -> VoiceTraits:
        speech = self._run(text, pitch, _DEFAULT_WPM)
        at_16k = resample(speech.samples, speech.sample_rate, SAMPLE_RATE)
        try:
            return measure_voice_traits(log_mel(at_16k), word_count=len(text.split()))
        except NoSpeechError as error:
            raise SpeechTimingError(f"cannot measure espeak-ng voice {self._voice!r}") from error

    def _calibration_text(self) -> str:
        return _CALIBRATION_TEXT.get(_language_key(self._language), _CALIBRATION_TEXT["en"])

    def _own_rate(self) -> float:
        if self._own_rate_wps is None:
            self._own_rate_wps = self._measure(self._calibration_text(), 50).speaking_rate_wps
        return self._own_rate_wps

    def _pitch_setting(self, pitch_hz: float) -> int:
        if not (math.isfinite(pitch_hz) and pitch_hz > 0):
            raise SpeechTimingError(f"voice pitch {pitch_hz!r} is not a positive number")
        if self._pitch_map is None:
            text = self._calibration_text()
            low, high = (
                math.log(self._measure(text, p).median_pitch_hz) for p in _CALIBRATION_PITCHES
            )
            self._pitch_map = (low, high)
        low, high = self._pitch_map
        p_low, p_high = _CALIBRATION_PITCHES
        if high <= low:
            return 50
        setting = p_low + (math.log(pitch_hz) - low) * (p_high - p_low) / (high - low)
        return int(min(max(round(setting), 0), 99))


def _ratio(wanted: float, own: float) -> float:
    if not (math.isfinite(wanted) and wanted > 0):
        raise SpeechTimingError(f"voice trait {wanted!r} is not a positive number")
    return min(max(wanted / own, 1.0 / _MAX_RATIO), _MAX_RATIO)
