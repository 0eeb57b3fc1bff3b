"""Voice traits from log-mel features, checked against measurements on the waveform itself."""

from __future__ import annotations

import subprocess

import numpy as np
import numpy.typing as npt
import pytest

from media.errors import InvalidFeaturesError, MediaError
from media.features import log_mel
from media.tts import resample
from media.voice import (
    NoSpeechError,
    measure_voice_traits,
    median_pitch_hz,
    speaking_rate_wps,
    speech_seconds,
)

TEXT = "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."


def yin_median_hz(
    samples: npt.NDArray[np.float32], sample_rate: int, fmin: float = 60.0, fmax: float = 400.0
) -> float:
    """Median F0 by YIN (de Cheveigné & Kawahara 2002) on 40 ms frames: the waveform oracle."""
    x = np.asarray(samples, dtype=np.float64)
    hop = sample_rate // 100
    width = int(0.02 * sample_rate)
    tau_max, tau_min = int(sample_rate / fmin), int(sample_rate / fmax)
    peak = np.max(np.abs(x))
    pitches = []
    for start in range(0, x.size - width - tau_max, hop):
        frame = x[start : start + width + tau_max]
        if np.sqrt(np.mean(frame[:width] ** 2)) < 0.02 * peak:
            continue
        lags = np.arange(tau_max + 1)
        windows = np.lib.stride_tricks.sliding_window_view(frame, width)[lags]
        diff = np.sum((windows[0] - windows) ** 2, axis=1)
        cumulative = np.cumsum(diff[1:])
        normalized = np.ones_like(diff)
        normalized[1:] = diff[1:] * np.arange(1, tau_max + 1) / np.maximum(cumulative, 1e-12)
        below = np.flatnonzero(normalized[tau_min:] < 0.15)
        if below.size == 0:
            continue
        tau = tau_min + below[0]
        while tau + 1 <= tau_max and normalized[tau + 1] < normalized[tau]:
            tau += 1
        pitches.append(sample_rate / tau)
    return float(np.median(pitches))


def espeak_16k(text: str, voice: str, pitch: int, words_per_minute: int = 175) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(words_per_minute), "--stdout"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    samples = np.frombuffer(wav[wav.find(b"data") + 8 :], dtype="<i2").astype(np.float32) / 32768
    return resample(samples, 22050, 16000)


@pytest.mark.parametrize(
    ("voice", "pitch"),
    [("en-us", 20), ("en-us", 50), ("en-us", 80), ("pt-br", 50), ("en-us+f4", 60)],
)
def test_pitch_from_features_agrees_with_yin_on_the_waveform(voice: str, pitch: int) -> None:
    audio = espeak_16k(TEXT, voice, pitch)
    from_features = median_pitch_hz(log_mel(audio))
    from_waveform = yin_median_hz(audio, 16000)
    assert from_features == pytest.approx(from_waveform, rel=0.10)


def test_pitch_orders_low_and_high_voices() -> None:
    low = median_pitch_hz(log_mel(espeak_16k(TEXT, "en-us", 20)))
    high = median_pitch_hz(log_mel(espeak_16k(TEXT, "en-us", 80)))
    assert high > 1.3 * low


def test_speaking_rate_follows_espeak_speed() -> None:
    words = len(TEXT.split())
    slow_audio = espeak_16k(TEXT, "en-us", 50, words_per_minute=120)
    fast_audio = espeak_16k(TEXT, "en-us", 50, words_per_minute=240)
    slow = speaking_rate_wps(log_mel(slow_audio), words)
    fast = speaking_rate_wps(log_mel(fast_audio), words)
    assert 1.5 < fast / slow < 2.5
    # Independent speech time: 10 ms RMS frames of the waveform within 30 dB of the loudest.
    for audio, rate in ((slow_audio, slow), (fast_audio, fast)):
        frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
        rms_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        active_s = np.count_nonzero(rms_db > rms_db.max() - 30) / 100
        assert rate == pytest.approx(words / active_s, rel=0.25)


def test_traits_bundle_both_measures() -> None:
    mel = log_mel(espeak_16k(TEXT, "en-us", 50))
    traits = measure_voice_traits(mel, word_count=17)
    assert traits.median_pitch_hz == median_pitch_hz(mel)
    assert traits.speaking_rate_wps == pytest.approx(17 / speech_seconds(mel))


def test_bad_features_and_silence_get_one_line_errors() -> None:
    with pytest.raises(InvalidFeaturesError, match=r"\(80, T\)"):
        median_pitch_hz(np.zeros((40, 100), dtype=np.float32))
    with pytest.raises(InvalidFeaturesError, match="NaN"):
        median_pitch_hz(np.full((80, 10), np.nan, dtype=np.float32))
    with pytest.raises(NoSpeechError) as info:
        speaking_rate_wps(np.zeros((80, 0), dtype=np.float32), 3)
    assert isinstance(info.value, MediaError)
    silence = log_mel(np.zeros(16000, dtype=np.float32))
    with pytest.raises(NoSpeechError, match="no speech"):
        median_pitch_hz(silence)
    with pytest.raises(NoSpeechError, match="no speech"):
        speaking_rate_wps(silence, 3)
