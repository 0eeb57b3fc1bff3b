"""The dubbed speech track: each cue's translation spoken in its slot, mixed into one signal.

Theory of operation
-------------------
Cue *i* owns the time from its start to the next cue's start (the last one: to the end of the
video). Its translation is synthesized at the speaker's rate (voice traits). If that is longer
than the time left in the slot, it is synthesized again faster, by exactly the missing ratio,
up to :data:`MAX_SPEEDUP` (espeak-ng changes its rate natively, so pitch and timbre do not
change). If even that does not fit, the speech *overruns*: it still starts no earlier than its
cue, never overlaps the previous cue's speech, and pushes the next cues later; the summary says
how late the latest one came. Speech that would run past the end of the video is cut there
with a short fade (``trimmed_s``). Speech shorter than its slot is not slowed down: it starts at
its cue and the rest of the slot is silence.

The phonemes of every placed utterance are kept on the video's clock for lip sync, and the
translated caption track is timed to where the speech actually is.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from media.dub.espeak_timed import PhonemeTime, TimedSpeech
from media.tts import resample
from schemas.messages import VoiceTraits

__all__ = [
    "MAX_SPEEDUP",
    "CueSpeech",
    "DubbedSpeech",
    "Fit",
    "TimedSynthesizer",
    "build_speech_track",
]

#: The most a cue's speech is sped up to fit its slot (1.5 x the speaker's rate).
MAX_SPEEDUP: Final = 1.5
#: Trailing silence kept after an utterance's last phoneme.
_TAIL_S: Final = 0.06
_FADE_S: Final = 0.03


class Fit(enum.Enum):
    FITS = "fits"
    SPED_UP = "sped_up"
    OVERRAN = "overran"
    TRIMMED = "trimmed"


class TimedSynthesizer(Protocol):
    def synthesize(
        self, text: str, *, voice: VoiceTraits | None = None, speed: float = 1.0
    ) -> TimedSpeech: ...


@dataclass(frozen=True, slots=True)
class CueSpeech:
    """Where one cue's translated speech went on the video's clock."""

    text: str
    cue_start_s: float
    start_s: float
    end_s: float
    speed: float
    fit: Fit


@dataclass(frozen=True, eq=False)
class DubbedSpeech:
    """The mixed track (mono float32), its phonemes on the same clock, one entry per cue."""

    samples: npt.NDArray[np.float32]
    sample_rate: int
    phonemes: tuple[PhonemeTime, ...]
    cues: tuple[CueSpeech, ...]
    #: Speech cut off at the end of the video.
    trimmed_s: float = 0.0

    @property
    def latest_s(self) -> float:
        """How much later than its cue the latest speech started."""
        return max((c.start_s - c.cue_start_s for c in self.cues), default=0.0)


def _spoken_part(speech: TimedSpeech) -> tuple[npt.NDArray[np.float32], tuple[PhonemeTime, ...]]:
    """Drop the trailing pause espeak-ng appends after the last phoneme."""
    voiced = [p for p in speech.phonemes if p.phoneme.strip()]
    if not voiced:
        return speech.samples[:0], ()
    end_s = min(voiced[-1].end_s + _TAIL_S, speech.duration_s)
    end = round(end_s * speech.sample_rate)
    kept = tuple(p for p in speech.phonemes if p.start_s < end_s)
    return speech.samples[:end], kept


def build_speech_track(
    starts_s: Sequence[float],
    texts: Sequence[str],
    *,
    duration_s: float,
    synthesizer: TimedSynthesizer,
    voice: VoiceTraits | None,
    sample_rate: int = 48000,
) -> DubbedSpeech:
    """Speak ``texts[i]`` from ``starts_s[i]`` (see the module docstring)."""
    if len(starts_s) != len(texts):
        raise ValueError(f"{len(texts)} texts for {len(starts_s)} cue starts")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    total = round(duration_s * sample_rate)
    track = np.zeros(total, dtype=np.float32)
    phonemes: list[PhonemeTime] = []
    placed: list[CueSpeech] = []
    trimmed_s = 0.0
    previous_end = 0.0
    order = sorted(range(len(texts)), key=lambda i: starts_s[i])
    for position, index in enumerate(order):
        text = texts[index].strip()
        if not text:
            continue
        cue_start = min(max(float(starts_s[index]), 0.0), duration_s)
        slot_end = float(starts_s[order[position + 1]]) if position + 1 < len(order) else duration_s
        start = max(cue_start, previous_end)
        available = max(slot_end - start, 0.0)
        speech = synthesizer.synthesize(text, voice=voice)
        samples, spoken = _spoken_part(speech)
        speed = 1.0
        length = samples.size / speech.sample_rate
        if length > available:
            speed = min(length / max(available, 1e-3) * 1.02, MAX_SPEEDUP)
            speech = synthesizer.synthesize(text, voice=voice, speed=speed)
            samples, spoken = _spoken_part(speech)
            length = samples.size / speech.sample_rate
        if not spoken:
            continue
        fit = Fit.FITS if speed == 1.0 else Fit.SPED_UP
        if length > available + 1e-3:
            fit = Fit.OVERRAN
        resampled = resample(samples, speech.sample_rate, sample_rate)
        first = round(start * sample_rate)
        room = max(total - first, 0)
        if resampled.size > room:
            trimmed_s += (resampled.size - room) / sample_rate
            resampled = resampled[:room].copy()
            fade = min(round(_FADE_S * sample_rate), resampled.size)
            if fade:
                resampled[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            fit = Fit.TRIMMED
        track[first : first + resampled.size] += resampled
        end = start + resampled.size / sample_rate
        phonemes.extend(
            PhonemeTime(p.phoneme, start + p.start_s, min(start + p.end_s, end))
            for p in spoken
            if start + p.start_s < end
        )
        placed.append(CueSpeech(text, cue_start, start, end, speed, fit))
        previous_end = end
    np.clip(track, -1.0, 1.0, out=track)
    return DubbedSpeech(track, sample_rate, tuple(phonemes), tuple(placed), trimmed_s)
