"""Errors of :mod:`media.dub`, under the ``media`` root so the CLI shows them as one line."""

from __future__ import annotations

from media.errors import MediaError


class DubError(MediaError):
    """Root of the dubbing errors."""


class VideoFileError(DubError):
    """The input is missing, unreadable, or has no video or no audio stream."""


class FaceModelError(DubError):
    """BlazeFace/FaceMesh or their runtime (LiteRT) is missing or cannot load."""


class OutputExistsError(DubError):
    """The output file exists and the caller did not ask to replace it."""


class DubWriteError(DubError):
    """The output could not be written (nothing is left behind)."""


class SpeechTimingError(DubError):
    """libespeak-ng is missing or failed to synthesize with phoneme events."""
