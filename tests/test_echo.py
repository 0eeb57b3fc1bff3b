"""Echo cancellation (WebRTC AEC3 through livekit) on our own TTS through a synthetic room.

Everything here uses the tuning sentences (media.echo.TUNING_*); the bench reports on the
evaluation ones.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import functools
import re

import numpy as np
import pytest

from media.asr import FeatureTranscriber
from media.echo import (
    FRAME_SAMPLES,
    TUNING_FAR_TEXTS,
    TUNING_NEAR_TEXT,
    EchoCanceller,
    EchoTestSignal,
    RoomSettings,
    echo_test_signal,
    erle,
    run_canceller,
)
from media.features import SAMPLE_RATE
from media.tts import TtsConfig, select_synthesizer
from tests.speech import whisper_model


@functools.cache
def tuning_signal(with_near_end: bool) -> EchoTestSignal:
    config = TtsConfig()
    far = [
        select_synthesizer("en", config).synthesize(text).at_rate(SAMPLE_RATE).samples
        for text in TUNING_FAR_TEXTS
    ]
    near = (
        # espeak-ng's Portuguese, as when the canceller was tuned (media/echo.py measure_erle).
        select_synthesizer("pt", TtsConfig(backend="espeak-ng"))
        .synthesize(TUNING_NEAR_TEXT)
        .at_rate(SAMPLE_RATE)
        .samples
        if with_near_end
        else np.zeros(0, dtype=np.float32)
    )
    return echo_test_signal(far, near, RoomSettings())


def test_erle_is_substantial_with_cancellation_and_zero_without() -> None:
    signal = tuning_signal(with_near_end=True)
    on = erle(signal, run_canceller(signal, EchoCanceller(enabled=True)), converge_s=2.0)
    off = erle(signal, run_canceller(signal, EchoCanceller(enabled=False)), converge_s=2.0)
    assert on.echo_only_s > 2.0
    # Substantial, not the goal figure: the issue's 25 dB is `parley bench call --two-way`'s
    # erle_db (28.3 on session 5's idle run); this tuning signal measures 25.8 here and 24.3
    # in one fresh-clone CI run (same code), so the test holds a behaviour, with room.
    assert on.erle_db >= 20.0, on
    assert abs(off.erle_db) < 0.5, off
    # The local user's own voice still goes out while the far end talks.
    assert on.near_end_level_db > -12.0, on


def _far_words_heard(samples: np.ndarray) -> float:
    transcript = FeatureTranscriber(whisper_model()).transcribe_audio(samples)
    heard = set(re.findall(r"[a-z']+", transcript.text.lower()))
    spoken = set(re.findall(r"[a-z']+", " ".join(TUNING_FAR_TEXTS).lower()))
    return len(heard & spoken) / len(spoken)


def test_our_own_speech_is_not_heard_back_with_cancellation_on() -> None:
    """What the microphone sends on, transcribed by Whisper: the played speech is gone with
    cancellation on, and heard with it off (so the test can fail)."""
    signal = tuning_signal(with_near_end=False)
    skip = 2 * SAMPLE_RATE  # convergence
    with_off = run_canceller(signal, EchoCanceller(enabled=False))[skip:]
    with_on = run_canceller(signal, EchoCanceller(enabled=True))[skip:]
    assert _far_words_heard(with_off) > 0.4
    assert _far_words_heard(with_on) < 0.1


def test_no_reference_keeps_the_near_end() -> None:
    """Nothing played: cancellation must leave the user's voice alone."""
    near = tuning_signal(with_near_end=True).near
    canceller = EchoCanceller(enabled=True)
    out = np.concatenate(
        [
            canceller.process(near[start : start + FRAME_SAMPLES])
            for start in range(0, near.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)
        ]
    )
    active = np.abs(near[: out.size]) > 0
    level_db = 10 * np.log10(np.sum(out[active] ** 2) / np.sum(near[: out.size][active] ** 2))
    assert level_db > -3.0


@pytest.mark.parametrize("enabled", [True, False])
def test_any_block_size_comes_out_in_whole_frames(enabled: bool) -> None:
    canceller = EchoCanceller(enabled=enabled)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(3 * FRAME_SAMPLES + 37)).astype(np.float32)
    canceller.reference(audio[:250])
    first = canceller.process(audio[:250])
    second = canceller.process(audio[250:])
    assert first.size == FRAME_SAMPLES
    assert first.size + second.size == 3 * FRAME_SAMPLES
    if not enabled:
        assert np.array_equal(np.concatenate([first, second]), audio[: 3 * FRAME_SAMPLES])
