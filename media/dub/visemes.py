"""Phonemes to mouth shapes over time, with coarticulation (Cohen-Massaro dominance blending).

Each phoneme (IPA, from :mod:`media.dub.espeak_timed`) maps to a viseme: a target
:class:`MouthShape` and how strongly it holds the lips (its *dominance*). Lips do not jump from
target to target: every segment's dominance rises before it and decays after it
(``alpha * exp(-theta * |t - centre|)``, stretched over the segment), and the shape at any time
is the dominance-weighted mean of the targets around it. A bilabial /p b m/ dominates strongly,
so the lips close even inside a fast word; an alveolar /t d n/ barely constrains the lips and
takes the shape of its neighbouring vowels, which is what coarticulation looks like. Pauses
longer than :data:`REST_AFTER_S` let the mouth close to rest. How wide the mouth opens also
follows the speech's loudness (:class:`JawFromLoudness`): louder syllables open more.

Shapes are in face units: ``opening`` is the inner-lip gap over the outer eye-corner distance
(the same measure :func:`media.dub.face_mesh.mouth_opening` reads back from a frame),
``width`` a factor on the mouth's own width, ``rounding`` in [0, 1] (lips pushed forward into
an O), ``closure`` in [0, 1] (lips pressed, as before a /p/).
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.dub.espeak_timed import PhonemeTime

__all__ = [
    "REST",
    "JawFromLoudness",
    "MouthPlanner",
    "MouthShape",
    "MouthTrack",
    "plan_mouth_track",
    "viseme_for",
]

#: A pause at least this long lets the mouth come to rest in its middle.
REST_AFTER_S: Final = 0.12
#: Dominance decay rate (per second) around a segment's edges.
_THETA: Final = 28.0
#: Jaw factor at silence-level loudness, its cap, and the loudness window (one 25 fps frame).
_JAW_FLOOR: Final = 0.35
_JAW_MAX: Final = 1.25
_JAW_WINDOW_S: Final = 0.04


@dataclass(frozen=True, slots=True)
class MouthShape:
    opening: float
    width: float
    rounding: float
    closure: float


@dataclass(frozen=True, slots=True)
class _Viseme:
    shape: MouthShape
    dominance: float


REST: Final = MouthShape(opening=0.0, width=1.0, rounding=0.0, closure=0.3)
_PAUSE: Final = _Viseme(REST, 0.6)
_NEUTRAL: Final = _Viseme(MouthShape(0.05, 1.0, 0.0, 0.0), 0.15)

# Targets by phoneme class; openings are fractions of the eye-corner distance (a wide /a/ opens
# the lips about a fifth of it: ~18 mm of ~95 mm).
_OPEN_VOWEL: Final = _Viseme(MouthShape(0.20, 1.04, 0.0, 0.0), 1.0)
_MID_VOWEL: Final = _Viseme(MouthShape(0.14, 1.10, 0.0, 0.0), 0.9)
_SCHWA: Final = _Viseme(MouthShape(0.10, 1.0, 0.0, 0.0), 0.7)
_CLOSE_FRONT: Final = _Viseme(MouthShape(0.06, 1.14, 0.0, 0.0), 0.9)
_ROUND_MID: Final = _Viseme(MouthShape(0.12, 0.86, 0.6, 0.0), 1.0)
_ROUND_CLOSE: Final = _Viseme(MouthShape(0.05, 0.78, 1.0, 0.0), 1.0)
_FRONT_ROUND: Final = _Viseme(MouthShape(0.06, 0.85, 0.7, 0.0), 0.9)
_BILABIAL: Final = _Viseme(MouthShape(0.0, 1.0, 0.0, 1.0), 3.0)
_LABIODENTAL: Final = _Viseme(MouthShape(0.02, 1.0, 0.0, 0.5), 2.0)
_POSTALVEOLAR: Final = _Viseme(MouthShape(0.05, 0.88, 0.5, 0.0), 1.2)
_ALVEOLAR: Final = _Viseme(MouthShape(0.05, 1.0, 0.0, 0.0), 0.3)
_VELAR: Final = _Viseme(MouthShape(0.07, 1.0, 0.0, 0.0), 0.25)
_W: Final = _Viseme(MouthShape(0.05, 0.76, 1.0, 0.0), 1.5)

# IPA letters, some of which look like Latin ones: that is the point (hence the noqa).
_BY_LETTER: Final[dict[str, _Viseme]] = {
    **dict.fromkeys("aæɐɑɒ", _OPEN_VOWEL),  # noqa: RUF001 (IPA letters, on purpose)
    **dict.fromkeys("eɛɜ", _MID_VOWEL),
    **dict.fromkeys("əʌɘɵ", _SCHWA),
    **dict.fromkeys("iɪj", _CLOSE_FRONT),  # noqa: RUF001 (IPA letters, on purpose)
    **dict.fromkeys("oɔ", _ROUND_MID),
    **dict.fromkeys("uʊ", _ROUND_CLOSE),
    **dict.fromkeys("yøœʏ", _FRONT_ROUND),  # noqa: RUF001 (IPA letters, on purpose)
    **dict.fromkeys("pbm", _BILABIAL),
    **dict.fromkeys("fv", _LABIODENTAL),
    **dict.fromkeys("ʃʒ", _POSTALVEOLAR),
    **dict.fromkeys("tdnlszrɾɹθðɲʎ", _ALVEOLAR),
    **dict.fromkeys("kgɡŋxhɣχʁ", _VELAR),  # noqa: RUF001 (IPA letters, on purpose)
    **dict.fromkeys("wʍ", _W),
}


def viseme_for(phoneme: str) -> tuple[MouthShape, float]:
    """The mouth target and dominance of one IPA phoneme (``""``: a pause)."""
    viseme = _viseme(phoneme)
    return viseme.shape, viseme.dominance


def _viseme(phoneme: str) -> _Viseme:
    letters = [
        ch
        for ch in unicodedata.normalize("NFD", phoneme)
        if not unicodedata.combining(ch) and ch not in "ˈˌːˑ'"
    ]
    if not letters:
        return _PAUSE
    # Affricates (tʃ, dʒ) and diphthongs take the shape of their most lip-constraining part.
    found = [_BY_LETTER[ch] for ch in letters if ch in _BY_LETTER]
    if not found:
        return _NEUTRAL
    return max(found, key=lambda v: v.dominance)


@dataclass(frozen=True, eq=False)
class MouthTrack:
    """Mouth shape parameters sampled at ``times_s`` (one row per time)."""

    times_s: npt.NDArray[np.float64]
    opening: npt.NDArray[np.float64]
    width: npt.NDArray[np.float64]
    rounding: npt.NDArray[np.float64]
    closure: npt.NDArray[np.float64]

    def at(self, index: int) -> MouthShape:
        return MouthShape(
            opening=float(self.opening[index]),
            width=float(self.width[index]),
            rounding=float(self.rounding[index]),
            closure=float(self.closure[index]),
        )


def plan_mouth_track(
    phonemes: Sequence[PhonemeTime], times_s: npt.ArrayLike, *, lead_s: float = 0.02
) -> MouthTrack:
    """Mouth shapes at ``times_s`` for phonemes on the same clock.

    ``lead_s`` moves the visual targets this much earlier than the sound: lips reach a shape
    slightly before it is heard. Outside every phoneme the mouth is at :data:`REST`.
    """
    times = np.asarray(times_s, dtype=np.float64)
    segments = _with_rests(phonemes)
    if not segments:
        rest = np.ones_like(times)
        return MouthTrack(
            times, rest * REST.opening, rest * REST.width, rest * 0.0, rest * REST.closure
        )
    starts = np.array([s.start_s for s in segments]) - lead_s
    ends = np.array([s.end_s for s in segments]) - lead_s
    visemes = [_viseme(s.phoneme) for s in segments]
    alphas = np.array([v.dominance for v in visemes])
    targets = np.array(
        [[v.shape.opening, v.shape.width, v.shape.rounding, v.shape.closure] for v in visemes]
    )
    # Distance from each time to each segment (0 inside it): the dominance plateaus inside a
    # segment and decays exponentially outside, so long vowels hold and short stops blend.
    before = starts[None, :] - times[:, None]
    after = times[:, None] - ends[None, :]
    distance = np.maximum(np.maximum(before, after), 0.0)
    dominance = alphas[None, :] * np.exp(-_THETA * distance)
    weights = dominance / np.maximum(dominance.sum(axis=1, keepdims=True), 1e-12)
    shape = weights @ targets
    # Far outside the speech (before the first, after the last segment) rest wins.
    outside = (times < starts[0] - 0.25) | (times > ends[-1] + 0.25)
    shape[outside] = [REST.opening, REST.width, REST.rounding, REST.closure]
    return MouthTrack(times, shape[:, 0], shape[:, 1], shape[:, 2], shape[:, 3])


def _with_rests(phonemes: Sequence[PhonemeTime]) -> list[PhonemeTime]:
    """The phonemes, with silent gaps between them filled by pauses (``""``)."""
    result: list[PhonemeTime] = []
    for phoneme in phonemes:
        if result and phoneme.start_s - result[-1].end_s > 1e-3:
            result.append(PhonemeTime("", result[-1].end_s, phoneme.start_s))
        result.append(phoneme)
    # A short pause is only a breath between words: it should not pull the lips shut.
    return [
        p
        for p in result
        if p.phoneme.strip() or p.end_s - p.start_s >= REST_AFTER_S or p is result[-1]
    ]


class JawFromLoudness:
    """How far the jaw drops at a time, from the speech's own loudness.

    Visemes say which shape the lips make; how *wide* a vowel opens also follows vocal effort
    (stressed, louder syllables open more). The factor is ``floor + (1 - floor) * rms / ref``,
    capped at :data:`_JAW_MAX`, with ``rms`` over :data:`_JAW_WINDOW_S` around the time and
    ``ref`` the 90th percentile of the voiced frames' RMS. It multiplies the viseme opening, so
    a closure (opening 0) stays closed however loud the speech is.
    """

    def __init__(
        self, samples: npt.NDArray[np.float32], sample_rate: int, *, floor: float = _JAW_FLOOR
    ) -> None:
        signal = np.asarray(samples, dtype=np.float64)
        self._cumulative = np.concatenate([[0.0], np.cumsum(signal**2)])
        self._rate = sample_rate
        self._floor = floor
        hop = max(1, round(0.01 * sample_rate))
        frames = self._rms(np.arange(0, signal.size, hop) / sample_rate)
        voiced = (
            frames[frames > 0.05 * frames.max()] if frames.size and frames.max() > 0 else frames
        )
        self._reference = float(np.percentile(voiced, 90)) if voiced.size else 1.0

    def _rms(self, times_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        size = self._cumulative.size - 1
        half = max(1, round(_JAW_WINDOW_S * self._rate / 2))
        centres = np.round(times_s * self._rate).astype(np.int64)
        lo = np.clip(centres - half, 0, size)
        hi = np.clip(centres + half, 0, size)
        energy = (self._cumulative[hi] - self._cumulative[lo]) / np.maximum(hi - lo, 1)
        result: npt.NDArray[np.float64] = np.sqrt(np.maximum(energy, 0.0))
        return result

    def factor(self, times_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        loudness = self._rms(times_s) / max(self._reference, 1e-9)
        result: npt.NDArray[np.float64] = np.clip(
            self._floor + (1.0 - self._floor) * loudness, 0.0, _JAW_MAX
        )
        return result


class MouthPlanner:
    """Mouth shapes for any times, looking only at the phonemes near them (long videos)."""

    #: Phonemes further than this from every asked time cannot influence the shape.
    MARGIN_S: Final = 1.0

    def __init__(
        self,
        phonemes: Sequence[PhonemeTime],
        *,
        lead_s: float = 0.02,
        jaw: JawFromLoudness | None = None,
    ) -> None:
        self._phonemes = sorted(phonemes, key=lambda p: p.start_s)
        self._starts = [p.start_s for p in self._phonemes]
        self._lead_s = lead_s
        self._jaw = jaw

    def shapes(self, times_s: npt.ArrayLike) -> MouthTrack:
        times = np.asarray(times_s, dtype=np.float64)
        if times.size == 0:
            return plan_mouth_track((), times, lead_s=self._lead_s)
        first = bisect.bisect_left(self._starts, float(times.min()) - self.MARGIN_S)
        last = bisect.bisect_right(self._starts, float(times.max()) + self.MARGIN_S)
        # The phoneme that started before the window may still be sounding in it.
        nearby = self._phonemes[max(first - 1, 0) : last]
        track = plan_mouth_track(nearby, times, lead_s=self._lead_s)
        if self._jaw is None:
            return track
        # The jaw leads the sound as the lips do.
        jaw = self._jaw.factor(times + self._lead_s)
        return MouthTrack(
            track.times_s, track.opening * jaw, track.width, track.rounding, track.closure
        )
