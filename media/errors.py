"""Errors raised by ``media``: one root, so callers can catch every media failure at once.

Every message is one line that names what was wrong (the file, the package, the shape), because
these errors reach the CLI and the status RPC as-is. Dependency exceptions (PyAV, CTranslate2,
numpy) are translated into these at the module boundary and kept in ``__cause__``.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ParleyError


class MediaError(ParleyError):
    """Root of every error raised by the ``media`` package."""


class AudioFileError(MediaError):
    """An audio or video file is missing, unreadable, corrupt or has no audio stream."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read audio from {str(self.path)!r}: {reason}")


class SilentAudioError(MediaError):
    """A file decoded fine but holds no audible signal, so there is nothing to transcribe."""

    def __init__(self, path: Path | str, peak: float) -> None:
        self.path = Path(path)
        self.peak = peak
        super().__init__(
            f"audio in {str(self.path)!r} is silent (peak amplitude {peak:.2e} of full scale)"
        )


class InvalidAudioError(MediaError):
    """An in-memory waveform has the wrong shape or type, or holds NaN/inf samples."""


class InvalidFeaturesError(MediaError):
    """A log-mel array has the wrong shape or type, or holds NaN/inf values."""


class StreamFinishedError(MediaError):
    """A streaming front end was fed after ``finish()``: its tail padding is already applied."""


class ModelNotFoundError(MediaError):
    """A model folder (or the package that ships it) is not installed."""


class ModelLoadError(MediaError):
    """A model folder exists but the runtime could not load it (corrupt or incompatible)."""


class UnsupportedLanguageError(MediaError):
    """The requested language cannot be transcribed by the loaded model."""


class TranscriptionError(MediaError):
    """The ASR runtime failed while decoding."""


class TranslationError(MediaError):
    """A translation backend failed on some input."""


class UnsupportedLanguagePairError(TranslationError):
    """No installed backend translates between the two languages asked for."""
