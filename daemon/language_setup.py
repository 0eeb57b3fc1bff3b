"""The model settings of a node's config turned into the media layer's objects.

One place reads ``models.*`` and ``call.language`` for the call service, the caption jobs,
``parley languages`` and the benches, so they all agree on which Whisper, translators and voices
serve a language, and all validate against the same :class:`~media.languages.LanguageMatrix`.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import Config
from media.languages import LanguageMatrix, language_matrix
from media.models import WhisperChoice, WhisperStore, whisper_cache_dir
from media.translate import TranslationConfig, local_models_in
from media.tts import TtsConfig

__all__ = [
    "language_matrix_for",
    "translation_config_for",
    "tts_config_for",
    "whisper_choice_for",
    "whisper_store_for",
]


def whisper_choice_for(config: Config) -> WhisperChoice:
    """``models.whisper_dir`` (a folder, older setting) wins over ``models.whisper``."""
    if config.models.whisper_dir:
        return WhisperChoice(config.models.whisper_dir)
    return WhisperChoice(config.models.whisper)


def whisper_store_for(
    config: Config, home_root: Path, *, compute_type: str = "float32"
) -> WhisperStore:
    """Whisper models for this home (the assembled base lives under ``<home>/models``)."""
    return WhisperStore(
        whisper_choice_for(config),
        cache_dir=whisper_cache_dir(home_root),
        cpu_threads=config.models.cpu_threads,
        compute_type=compute_type,
    )


def translation_config_for(config: Config) -> TranslationConfig:
    """``models.translation_backend`` and the local models in ``models.translation_dir``."""
    folder = config.models.translation_dir
    local = local_models_in(Path(folder).expanduser()) if folder else ()
    return TranslationConfig(
        backend=config.models.translation_backend,  # type: ignore[arg-type]
        local_models=local,
    )


def tts_config_for(config: Config) -> TtsConfig:
    """``models.tts``: the voices calls speak with (and what the language matrix lists)."""
    return TtsConfig(backend=config.models.tts)  # type: ignore[arg-type]


def language_matrix_for(config: Config) -> LanguageMatrix:
    return language_matrix(
        whisper=whisper_choice_for(config),
        translation=translation_config_for(config),
        tts=tts_config_for(config),
    )
