"""Where a recording has speech: the Silero VAD that faster-whisper ships, grouped into windows.

File captioning has the whole waveform, so silence need not be decoded at all: the speech
spans faster-whisper's ``get_speech_timestamps`` finds are grouped into windows of at most one
Whisper window each (spans closer together than that share a window, silence included, so the
decoder still sees a pause as a pause), and whatever lies between windows is never decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["group_spans", "speech_spans"]

#: Samples per log-mel frame (16 kHz, hop 160).
_SAMPLES_PER_FRAME: Final = 160


def speech_spans(audio: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """Speech as ``[start_frame, end_frame)`` log-mel frame ranges of 16 kHz ``audio``."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions())
    return [
        (int(span["start"]) // _SAMPLES_PER_FRAME, -(-int(span["end"]) // _SAMPLES_PER_FRAME))
        for span in found
    ]


def group_spans(spans: Sequence[tuple[int, int]], *, window_frames: int) -> list[tuple[int, int]]:
    """Consecutive spans joined while the group fits ``window_frames``; a longer span stays
    alone (the caller cuts it). Spans must be sorted and not overlap."""
    groups: list[tuple[int, int]] = []
    for start, end in spans:
        if end <= start:
            continue
        if groups and end - groups[-1][0] <= window_frames and start >= groups[-1][1]:
            groups[-1] = (groups[-1][0], end)
        else:
            groups.append((start, end))
    return groups
