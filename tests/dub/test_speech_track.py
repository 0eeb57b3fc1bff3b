"""Fitting each cue's speech into its slot, with a stand-in synthesizer whose durations are
exact (the real espeak-ng path is covered in test_speech_timing and test_dub_video)."""

from __future__ import annotations

import numpy as np
import pytest

from media.dub.espeak_timed import PhonemeTime, TimedSpeech
from media.dub.speech_track import MAX_SPEEDUP, Fit, build_speech_track

RATE = 16000


class StandInSynthesizer:
    """0.1 s per character of text at speed 1, one /a/ phoneme per character."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def synthesize(self, text, *, voice=None, speed=1.0) -> TimedSpeech:
        self.calls.append((text, speed))
        step = 0.1 / speed
        phonemes = tuple(PhonemeTime("a", i * step, (i + 1) * step) for i in range(len(text)))
        samples = np.full(round(len(text) * step * RATE), 0.5, dtype=np.float32)
        return TimedSpeech(samples, RATE, phonemes)


def _track(starts, texts, duration):
    synthesizer = StandInSynthesizer()
    speech = build_speech_track(
        starts, texts, duration_s=duration, synthesizer=synthesizer, voice=None, sample_rate=RATE
    )
    return speech, synthesizer


def test_speech_that_fits_starts_at_its_cue_with_the_speakers_rate() -> None:
    speech, synthesizer = _track([1.0, 4.0], ["abc", "de"], 10.0)
    assert [c.fit for c in speech.cues] == [Fit.FITS, Fit.FITS]
    assert [c.start_s for c in speech.cues] == [1.0, 4.0]
    assert all(speed == 1.0 for _, speed in synthesizer.calls)
    loud = np.flatnonzero(speech.samples > 0.25) / RATE
    assert loud[0] == pytest.approx(1.0, abs=1e-3)


def test_too_long_speech_is_sped_up_to_fit() -> None:
    # 12 chars = 1.2 s into a 1.0 s slot: 1.2x faster (plus 2 % margin).
    speech, _ = _track([0.0, 1.0], ["abcdefghijkl", "x"], 5.0)
    first = speech.cues[0]
    assert first.fit is Fit.SPED_UP
    assert first.speed == pytest.approx(1.2 * 1.02, rel=1e-3)
    assert first.end_s <= 1.0
    assert speech.cues[1].start_s == 1.0


def test_speech_that_cannot_fit_overruns_and_pushes_the_next_cue() -> None:
    speech, _ = _track([0.0, 0.5], ["abcdefghijklmnopqrst", "xy"], 5.0)  # 2 s into 0.5 s
    first, second = speech.cues
    assert first.fit is Fit.OVERRAN and first.speed == MAX_SPEEDUP
    assert second.start_s == pytest.approx(first.end_s)
    assert speech.latest_s == pytest.approx(second.start_s - 0.5)
    # Never two voices at once: the samples are the stand-in's constant, never a sum.
    assert speech.samples.max() <= 0.5 + 1e-6


def test_speech_past_the_end_of_the_video_is_trimmed_with_a_fade() -> None:
    speech, _ = _track([0.0], ["abcdefghijklmnopqrstuvwxyz"], 1.0)
    assert speech.cues[0].fit is Fit.TRIMMED
    assert speech.samples.size == RATE
    assert speech.trimmed_s > 0.5
    assert speech.samples[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(p.end_s <= 1.0 + 1e-9 for p in speech.phonemes)


def test_phonemes_move_to_the_video_clock() -> None:
    speech, _ = _track([2.0], ["ab"], 5.0)
    assert [(p.start_s, p.end_s) for p in speech.phonemes] == [
        pytest.approx((2.0, 2.1)),
        pytest.approx((2.1, 2.2)),
    ]


def test_empty_translations_are_skipped_and_bad_input_refused() -> None:
    speech, synthesizer = _track([0.0, 1.0], ["  ", "ab"], 3.0)
    assert len(speech.cues) == 1 and len(synthesizer.calls) == 1
    with pytest.raises(ValueError, match="texts for"):
        _track([0.0], ["a", "b"], 3.0)
