"""espeak-ng phoneme events and the viseme track planned from them."""

from __future__ import annotations

import numpy as np
import pytest

from media.dub.errors import SpeechTimingError
from media.dub.espeak_timed import PhonemeTime, TimedEspeak
from media.dub.visemes import REST, MouthPlanner, plan_mouth_track, viseme_for
from schemas.messages import VoiceTraits


@pytest.fixture(scope="module")
def portuguese() -> TimedEspeak:
    return TimedEspeak("pt", voice_name="pt-br")


def test_phonemes_tile_the_speech(portuguese) -> None:
    speech = portuguese.synthesize("Papai mandou um abraço para a mamãe.")
    assert speech.duration_s > 1.0
    starts = [p.start_s for p in speech.phonemes]
    assert starts == sorted(starts)
    for before, after in zip(speech.phonemes, speech.phonemes[1:], strict=False):
        assert before.end_s == pytest.approx(after.start_s)
    assert speech.phonemes[-1].end_s == pytest.approx(speech.duration_s, abs=1e-3)
    spoken = "".join(p.phoneme for p in speech.phonemes)
    assert spoken.count("p") >= 2 and spoken.count("m") >= 3


def test_phoneme_times_match_the_audio(portuguese) -> None:
    # Independent check: pauses reported by espeak are quiet in the audio, vowels are loud.
    speech = portuguese.synthesize("Olá. Bom dia.")
    rate = speech.sample_rate

    def rms(p: PhonemeTime) -> float:
        part = speech.samples[round(p.start_s * rate) : round(p.end_s * rate)]
        return float(np.sqrt(np.mean(part**2))) if part.size else 0.0

    vowels = [rms(p) for p in speech.phonemes if p.phoneme in ("a", "o", "i")]
    pauses = [rms(p) for p in speech.phonemes if not p.phoneme and p.end_s - p.start_s > 0.05]
    assert vowels and pauses
    assert min(vowels) > 5 * max(pauses)


def test_speed_and_voice_traits_change_the_timing(portuguese) -> None:
    text = "Hoje vamos falar de foguetes e de estrelas."
    normal = portuguese.synthesize(text)
    faster = portuguese.synthesize(text, speed=1.5)
    assert faster.duration_s < 0.8 * normal.duration_s
    slow_speaker = VoiceTraits(median_pitch_hz=110.0, speaking_rate_wps=1.6)
    assert portuguese.synthesize(text, voice=slow_speaker).duration_s > normal.duration_s


def test_unknown_voice_is_a_one_line_error() -> None:
    with pytest.raises(SpeechTimingError, match="no voice 'xx-nothing'"):
        TimedEspeak("xx", voice_name="xx-nothing")


def test_viseme_classes() -> None:
    closed, _ = viseme_for("p")
    open_a, _ = viseme_for("a")
    rounded, _ = viseme_for("u")
    spread, _ = viseme_for("i")
    assert closed.closure == 1.0 and closed.opening == 0.0
    assert open_a.opening > spread.opening
    assert rounded.rounding == 1.0 and rounded.width < 1.0 < spread.width
    assert viseme_for("\u02c8a")[0] == open_a  # stress marks (U+02C8) are not phonemes
    assert viseme_for("ɐ̃")[0] == open_a  # nor is nasalisation
    assert viseme_for("")[0] == REST


def test_bilabial_closes_the_lips_inside_a_fast_word() -> None:
    # "apa" with a 60 ms /p/: coarticulation must not smear the closure away.
    phonemes = [
        PhonemeTime("a", 0.0, 0.15),
        PhonemeTime("p", 0.15, 0.21),
        PhonemeTime("a", 0.21, 0.36),
    ]
    track = plan_mouth_track(phonemes, [0.075, 0.18, 0.285], lead_s=0.0)
    vowel = viseme_for("a")[0].opening
    assert track.opening[0] > 0.6 * vowel and track.opening[2] > 0.6 * vowel
    assert track.opening[1] < 0.3 * vowel
    assert track.closure[1] > 0.5


def test_alveolar_takes_the_shape_of_its_vowels() -> None:
    # "ata": /t/ barely constrains the lips, so the mouth stays fairly open through it.
    phonemes = [
        PhonemeTime("a", 0.0, 0.15),
        PhonemeTime("t", 0.15, 0.21),
        PhonemeTime("a", 0.21, 0.36),
    ]
    track = plan_mouth_track(phonemes, [0.18], lead_s=0.0)
    t_target, _ = viseme_for("t")
    assert track.opening[0] > 2 * t_target.opening


def test_rest_outside_speech_and_in_long_pauses() -> None:
    phonemes = [PhonemeTime("a", 1.0, 1.2), PhonemeTime("", 1.2, 2.0), PhonemeTime("a", 2.0, 2.2)]
    track = plan_mouth_track(phonemes, [0.0, 1.1, 1.6, 2.1, 3.0], lead_s=0.0)
    assert track.opening[0] == REST.opening and track.opening[4] == REST.opening
    assert track.opening[2] < 0.2 * track.opening[1]
    assert track.opening[3] > 0.6 * viseme_for("a")[0].opening


def test_planner_windows_agree_with_the_whole_track(portuguese) -> None:
    speech = portuguese.synthesize("O rato roeu a roupa do rei de Roma. Papai pagou a pipoca.")
    times = np.arange(0.0, speech.duration_s, 0.04)
    whole = plan_mouth_track(speech.phonemes, times)
    planner = MouthPlanner(speech.phonemes)
    one_by_one = np.array([planner.shapes(np.array([t])).opening[0] for t in times])
    assert np.allclose(one_by_one, whole.opening, atol=1e-3)
