"""Energy VAD on log-mel frames, against the waveform it came from.

The oracle is computed from the audio, not the features: the RMS of each 10 ms of samples
centred on a frame, thresholded in dBFS. It shares nothing with the detector but the idea that
speech is louder than silence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from media.audio import load_audio
from media.errors import InvalidFeaturesError
from media.features import HOP_LENGTH, SAMPLE_RATE, log_mel
from media.vad import EnergyVad, VadSettings, frame_levels_db
from tests.speech import synthesize_speech

ORACLE_THRESHOLD_DBFS = -45.0


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("vad")
    texts = (
        "The birch canoe slid on the smooth planks.",
        "Glue the sheet to the dark blue background.",
    )
    return [
        load_audio(synthesize_speech(text, folder / f"sentence{index}.wav"))
        for index, text in enumerate(texts)
    ]


def padded_speech(sentences: list[np.ndarray], noise_dbfs: float, seed: int = 0) -> np.ndarray:
    second = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([second, sentences[0], second, sentences[1], second])
    noise = np.random.default_rng(seed).normal(0.0, 10 ** (noise_dbfs / 20), audio.shape)
    return (audio + noise).astype(np.float32)


def rms_oracle(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Per log-mel frame: is the RMS of the 10 ms centred on it above the threshold?"""
    half = HOP_LENGTH // 2
    padded = np.pad(audio, (half, half + HOP_LENGTH))
    frames = np.stack(
        [padded[k * HOP_LENGTH : k * HOP_LENGTH + HOP_LENGTH] for k in range(n_frames)]
    )
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud: np.ndarray = 20 * np.log10(np.maximum(rms, 1e-12)) > ORACLE_THRESHOLD_DBFS
    return loud


def with_hangover(active: np.ndarray, frames: int) -> np.ndarray:
    """Extend every run of active frames by ``frames`` (the detector's hangover)."""
    out = active.copy()
    last = -(10**9)
    for k, value in enumerate(active):
        if value:
            last = k
        out[k] = k - last <= frames
    return out


@pytest.mark.parametrize("noise_dbfs", [-90.0, -65.0])
def test_agrees_with_the_waveform_rms_oracle(
    sentences: list[np.ndarray], noise_dbfs: float
) -> None:
    audio = padded_speech(sentences, noise_dbfs)
    features = log_mel(audio)
    decisions = EnergyVad().process(features)
    oracle = rms_oracle(audio, features.shape[1])
    assert 0.3 < oracle.mean() < 0.8  # the clip really is part speech, part silence
    assert np.mean(decisions.active == oracle) >= 0.90
    smoothed_oracle = with_hangover(oracle, VadSettings().hangover_frames)
    assert np.mean(decisions.speech == smoothed_oracle) >= 0.90
    # The padding seconds around the speech are silence to both.
    assert not decisions.speech[: SAMPLE_RATE // HOP_LENGTH - 30].any()
    assert not decisions.speech[-(SAMPLE_RATE // HOP_LENGTH - 30) :].any()


@pytest.mark.parametrize("noise_dbfs", [None, -70.0, -60.0, -50.0])
def test_silence_and_low_noise_never_trigger(noise_dbfs: float | None) -> None:
    audio = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    if noise_dbfs is not None:
        audio += (
            np.random.default_rng(2)
            .normal(0.0, 10 ** (noise_dbfs / 20), audio.shape)
            .astype(np.float32)
        )
    decisions = EnergyVad().process(log_mel(audio))
    assert not decisions.speech.any()
    assert not decisions.active.any()


def test_speech_in_noise_is_found_after_the_floor_adapts(sentences: list[np.ndarray]) -> None:
    # -40 dBFS noise is above the initial floor guess, yet below the speech.
    audio = padded_speech(sentences, -40.0, seed=3)
    features = log_mel(audio)
    decisions = EnergyVad().process(features)
    oracle = rms_oracle(padded_speech(sentences, -200.0), features.shape[1])
    assert decisions.speech[oracle].mean() >= 0.8
    assert not decisions.speech[: SAMPLE_RATE // HOP_LENGTH - 30].any()


def test_chunked_decisions_equal_whole_decisions(sentences: list[np.ndarray]) -> None:
    features = log_mel(padded_speech(sentences, -65.0))
    whole = EnergyVad().process(features)
    vad = EnergyVad()
    parts = [vad.process(features[:, i : i + 7]) for i in range(0, features.shape[1], 7)]
    assert [part.first_frame for part in parts] == list(range(0, features.shape[1], 7))
    assert np.array_equal(np.concatenate([p.speech for p in parts]), whole.speech)
    assert np.array_equal(np.concatenate([p.floor_db for p in parts]), whole.floor_db)
    assert vad.frames_seen == features.shape[1]


def test_level_is_calibrated_to_rms_dbfs() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for amplitude in (1.0, 0.1, 0.01):
        sine = (amplitude * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
        rms_dbfs = 20 * np.log10(amplitude / np.sqrt(2))
        levels = frame_levels_db(log_mel(sine))
        assert np.median(levels) == pytest.approx(rms_dbfs, abs=0.5)


def test_a_single_click_is_not_speech() -> None:
    audio = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    audio[SAMPLE_RATE] = 0.9
    decisions = EnergyVad(VadSettings(onset_frames=4)).process(log_mel(audio))
    assert decisions.active.any()
    assert not decisions.speech.any()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((81, 5), dtype=np.float32),
        np.zeros((80,), dtype=np.float32),
        np.full((80, 5), np.nan, dtype=np.float32),
        np.zeros((80, 5), dtype=np.int32),
    ],
)
def test_bad_features_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(InvalidFeaturesError) as caught:
        EnergyVad().process(bad)
    assert "\n" not in str(caught.value)


def test_empty_chunk_is_fine() -> None:
    decisions = EnergyVad().process(np.zeros((80, 0), dtype=np.float32))
    assert decisions.n_frames == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"margin_db": 0.0},
        {"margin_db": float("inf")},
        {"floor_window_s": 0.0},
        {"onset_frames": 0},
        {"hangover_s": -0.1},
    ],
)
def test_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VadSettings(**settings)
