"""Voice-activity detection on Whisper log-mel frames: energy against a running noise floor.

The receiver of a call has decoded log-mel frames, not audio, so the detector works on those.
Normalised features are an affine map of log10 mel power (``x = 4 f - 4``), except for the bins
flattened by the ``max - 8`` clamp, which sit 80 dB below the loudest bin and do not move a
frame's total; so a frame's level is recovered as ``10 log10(sum of mel power)``, shifted so a
full-scale sine reads about -3 dB like its RMS in dBFS.

Theory of operation, one decision per 10 ms frame, causal (no look-ahead):

1. *Noise floor*: the minimum level over the last ``floor_window_s`` (minimum statistics: speech
   has gaps and stop closures every few hundred ms, so the minimum tracks the background even
   while someone talks). Before a full window has been heard, ``initial_floor_db`` stands in for
   the history, so speech at the very start of a stream is still detected.
2. *Active*: the level is ``margin_db`` above the floor and above ``min_speech_level_db`` (so a
   digitally silent stream followed by dither never counts as speech).
3. *Speech*: ``onset_frames`` consecutive active frames start speech (one click does not);
   speech lasts until ``hangover_s`` after the last active frame, which bridges the short dips
   inside and between words.

Pure numpy and per-frame Python: 100 frames a second is nothing to loop over.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from media.errors import InvalidFeaturesError
from media.features import FRAMES_PER_SECOND, N_MELS, FloatArray

BoolArray = npt.NDArray[np.bool_]

# 10 log10(sum of mel power) of a full-scale 1 kHz sine is about +26 dB with Whisper's filters;
# subtracting this makes that sine read -3 dB, its RMS in dBFS (tests check the calibration).
LEVEL_OFFSET_DB: Final = 29.0


def as_feature_chunk(features: npt.ArrayLike) -> FloatArray:
    """Validate a chunk of normalised log-mel frames ``(80, k)``, ``k >= 0``; return float32."""
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] != N_MELS:
        raise InvalidFeaturesError(
            f"log-mel features must have shape ({N_MELS}, frames), got {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidFeaturesError(f"log-mel features must be floating point, got {array.dtype}")
    chunk = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(chunk)):
        raise InvalidFeaturesError("log-mel features hold NaN or infinite values")
    return chunk


def frame_levels_db(features: npt.ArrayLike) -> FloatArray:
    """Each frame's level in dB (about dBFS of RMS), from normalised log-mel ``(80, k)``."""
    chunk = as_feature_chunk(features)
    log_power = chunk.astype(np.float64) * 4.0 - 4.0
    # Sum of 10**x without overflow: factor out each frame's largest bin.
    peak = log_power.max(axis=0) if chunk.shape[1] else np.zeros(0)
    total = np.sum(10.0 ** (log_power - peak[None, :]), axis=0)
    levels: FloatArray = (10.0 * (peak + np.log10(total)) - LEVEL_OFFSET_DB).astype(np.float32)
    return levels


@dataclass(frozen=True, kw_only=True)
class VadSettings:
    """Thresholds of :class:`EnergyVad`; levels in dB on ``frame_levels_db``'s scale."""

    margin_db: float = 12.0
    min_speech_level_db: float = -60.0
    initial_floor_db: float = -50.0
    floor_window_s: float = 3.0
    onset_frames: int = 2
    hangover_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("margin_db", "min_speech_level_db", "initial_floor_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.margin_db <= 0:
            raise ValueError(f"margin_db must be > 0, got {self.margin_db}")
        if not (0.1 <= self.floor_window_s <= 60.0):
            raise ValueError(f"floor_window_s must be in [0.1, 60] s, got {self.floor_window_s}")
        if not (1 <= self.onset_frames <= FRAMES_PER_SECOND):
            raise ValueError(f"onset_frames must be in [1, 100], got {self.onset_frames}")
        if not (0.0 <= self.hangover_s <= 5.0):
            raise ValueError(f"hangover_s must be in [0, 5] s, got {self.hangover_s}")

    @property
    def floor_window_frames(self) -> int:
        return max(1, round(self.floor_window_s * FRAMES_PER_SECOND))

    @property
    def hangover_frames(self) -> int:
        return round(self.hangover_s * FRAMES_PER_SECOND)


@dataclass(frozen=True, eq=False)
class VadDecisions:
    """Per-frame results of one ``EnergyVad.process`` call, each of length ``n_frames``."""

    first_frame: int
    level_db: FloatArray
    floor_db: FloatArray
    active: BoolArray
    speech: BoolArray

    @property
    def n_frames(self) -> int:
        return int(self.speech.shape[0])


@dataclass
class _FloorTracker:
    """Sliding-window minimum in O(1) amortised per frame (monotonic deque)."""

    window: int
    initial_db: float
    _frames: int = 0
    _candidates: deque[tuple[int, float]] = field(default_factory=deque)

    def update(self, level_db: float) -> float:
        index = self._frames
        self._frames += 1
        while self._candidates and self._candidates[-1][1] >= level_db:
            self._candidates.pop()
        self._candidates.append((index, level_db))
        while self._candidates[0][0] <= index - self.window:
            self._candidates.popleft()
        floor = self._candidates[0][1]
        if index < self.window:
            # The unheard part of the first window counts as a quiet room.
            floor = min(floor, self.initial_db)
        return floor


class EnergyVad:
    """Streaming voice-activity detector: feed log-mel chunks, get one decision per frame."""

    def __init__(self, settings: VadSettings | None = None) -> None:
        self._settings = settings if settings is not None else VadSettings()
        self._floor = _FloorTracker(
            window=self._settings.floor_window_frames, initial_db=self._settings.initial_floor_db
        )
        self._frames_seen = 0
        self._active_run = 0
        self._hangover_left = 0
        self._in_speech = False

    @property
    def settings(self) -> VadSettings:
        return self._settings

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    @property
    def in_speech(self) -> bool:
        """The decision for the last frame processed."""
        return self._in_speech

    def process(self, features: npt.ArrayLike) -> VadDecisions:
        """Decide every frame of a ``(80, k)`` chunk of normalised log-mel features."""
        levels = frame_levels_db(features)
        n = levels.shape[0]
        floors = np.empty(n, dtype=np.float32)
        active = np.zeros(n, dtype=np.bool_)
        speech = np.zeros(n, dtype=np.bool_)
        settings = self._settings
        for k in range(n):
            level = float(levels[k])
            floor = self._floor.update(level)
            floors[k] = floor
            is_active = level >= floor + settings.margin_db and (
                level >= settings.min_speech_level_db
            )
            active[k] = is_active
            self._active_run = self._active_run + 1 if is_active else 0
            if is_active and (self._in_speech or self._active_run >= settings.onset_frames):
                self._in_speech = True
                self._hangover_left = settings.hangover_frames
            elif self._in_speech and not is_active:
                if self._hangover_left > 0:
                    self._hangover_left -= 1
                else:
                    self._in_speech = False
            speech[k] = self._in_speech
        first = self._frames_seen
        self._frames_seen += n
        return VadDecisions(
            first_frame=first, level_db=levels, floor_db=floors, active=active, speech=speech
        )
