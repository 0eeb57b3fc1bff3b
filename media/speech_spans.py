"""Where a recording has speech: the Silero VAD that faster-whisper ships, in log-mel frames.

File captioning has the whole waveform, so it can ask the VAD two things, from one pass of the
network (:func:`find_speech`):

- *where the pauses are* (:meth:`SpeechMap.pauses`). File captioning no longer cuts long
  recordings in them: slices cut in a pause and zero-padded to a window lost words against
  faster-whisper's own windowing (``media.caption_file``, issue 19, session 5).
- *what to skip*: long silences (:meth:`SpeechMap.speech_groups`, faster-whisper's own
  ``vad_filter`` rule: silences of at least 2 s, 400 ms of padding kept around speech). The
  groups are joined while they fit one window (:func:`group_spans`), so the decoder still sees a
  pause as a pause, and whatever lies between groups is never decoded.

Pure except :func:`find_speech` (which runs the network); times are ``[start, end)`` frame
ranges of the recording's log-mel (16 kHz, hop 160).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["SpeechMap", "find_speech", "group_spans", "speech_spans"]

#: Samples per log-mel frame (16 kHz, hop 160).
_SAMPLES_PER_FRAME: Final = 160
_FRAMES_PER_SECOND: Final = 100
#: The VAD's finest useful pause: shorter silences (stop closures, the breath between two
#: words said together) stay inside a stretch of speech.
FINE_MIN_SILENCE_MS: Final = 100
#: faster-whisper's ``VadOptions`` defaults: what counts as a silence worth skipping, and how
#: much audio is kept on each side of speech.
SKIP_MIN_SILENCE_S: Final = 2.0
SKIP_PAD_S: Final = 0.4


@dataclass(frozen=True, slots=True)
class SpeechMap:
    """Speech found in ``total_frames`` frames: ``spans`` sorted, disjoint, unpadded."""

    spans: tuple[tuple[int, int], ...]
    total_frames: int

    def pauses(self) -> list[tuple[int, int]]:
        """The silences: before the first span, between spans, after the last; none when no
        speech was found (the VAD then knows nothing about where a cut would fall)."""
        if not self.spans:
            return []
        pauses: list[tuple[int, int]] = []
        previous_end = 0
        for start, end in self.spans:
            if start > previous_end:
                pauses.append((previous_end, start))
            previous_end = max(previous_end, end)
        if self.total_frames > previous_end:
            pauses.append((previous_end, self.total_frames))
        return pauses

    def speech_groups(
        self, *, min_silence_s: float = SKIP_MIN_SILENCE_S, pad_s: float = SKIP_PAD_S
    ) -> list[tuple[int, int]]:
        """Speech with silences shorter than ``min_silence_s`` kept inside, padded by ``pad_s``
        on each side (a pause too short for both pads is split at its middle), as
        ``get_speech_timestamps`` pads its spans."""
        min_silence = round(min_silence_s * _FRAMES_PER_SECOND)
        pad = round(pad_s * _FRAMES_PER_SECOND)
        merged: list[list[int]] = []
        for start, end in self.spans:
            if merged and start - merged[-1][1] < min_silence:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        padded: list[tuple[int, int]] = []
        for index, (start, end) in enumerate(merged):
            if index == 0:
                low = max(0, start - pad)
            else:
                previous_end = merged[index - 1][1]
                gap = start - previous_end
                low = start - gap // 2 if gap < 2 * pad else start - pad
            if index == len(merged) - 1:
                high = min(self.total_frames, end + pad)
            else:
                gap = merged[index + 1][0] - end
                high = end + gap // 2 if gap < 2 * pad else end + pad
            padded.append((low, high))
        return padded


def find_speech(audio: npt.NDArray[np.float32]) -> SpeechMap:
    """Speech in 16 kHz ``audio`` by faster-whisper's Silero VAD (pauses of 100 ms and more)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(
        audio, VadOptions(min_silence_duration_ms=FINE_MIN_SILENCE_MS, speech_pad_ms=0)
    )
    spans = tuple(
        (int(span["start"]) // _SAMPLES_PER_FRAME, -(-int(span["end"]) // _SAMPLES_PER_FRAME))
        for span in found
    )
    return SpeechMap(spans=spans, total_frames=-(-len(audio) // _SAMPLES_PER_FRAME))


def speech_spans(audio: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """Speech as padded frame ranges, faster-whisper's ``vad_filter`` defaults."""
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
