"""Speech recognition in any language this install knows: identify, then pick the model.

:class:`WhisperRecognizer` joins the model choice (:class:`media.models.WhisperStore`,
``models.whisper``) to the decoder (:class:`media.asr.FeatureTranscriber`):
``identify_language`` runs on the multilingual model, ``for_language`` returns a decoder fixed
to one language on the model ``auto`` picks for it (tiny.en for English, base otherwise).
Loading is blocking: call it from a worker thread.
"""

from __future__ import annotations

import dataclasses

import numpy.typing as npt

from media.asr import DecodeOptions, FeatureTranscriber, LanguageGuess
from media.models import WhisperStore
from media.translate import language_key

__all__ = ["WhisperRecognizer"]


class WhisperRecognizer:
    """Identification and per-language decoders over one :class:`WhisperStore`."""

    def __init__(self, store: WhisperStore, *, options: DecodeOptions | None = None) -> None:
        self._store = store
        self._options = options if options is not None else DecodeOptions()

    @property
    def store(self) -> WhisperStore:
        return self._store

    def identify_language(self, mel: npt.ArrayLike) -> LanguageGuess:
        return FeatureTranscriber(self._store.model_for(None)).identify_language(mel)

    def for_language(self, language: str) -> FeatureTranscriber:
        """A decoder fixed to ``language`` (one-line ``UnsupportedLanguageError`` if none)."""
        language = language_key(language)
        model = self._store.model_for(language)
        transcriber = FeatureTranscriber(model, options=self._options)
        fixed = language if transcriber.is_multilingual else "en"
        return FeatureTranscriber(model, options=dataclasses.replace(self._options, language=fixed))
