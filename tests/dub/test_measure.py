"""The bench's figures on series with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from media.dub.measure import loudness_envelope, psnr_outside, sync_figure


def test_sync_figure_finds_a_known_lag() -> None:
    rng = np.random.default_rng(4)
    loudness = np.convolve(rng.random(400), np.ones(5) / 5, mode="same")
    # The mouth opens two frames (80 ms at 25 fps) after the sound.
    opening = np.concatenate([np.zeros(2), loudness[:-2]]) + 0.01 * rng.random(400)
    figure = sync_figure(opening, loudness, frame_s=0.04)
    assert figure.correlation > 0.95
    assert figure.lag_ms == pytest.approx(80.0, abs=10.0)


def test_sync_figure_of_unrelated_series_is_small() -> None:
    rng = np.random.default_rng(5)
    figure = sync_figure(rng.random(500), rng.random(500), frame_s=0.04)
    assert abs(figure.correlation) < 0.2


def test_sync_figure_ignores_frames_without_a_face() -> None:
    loudness = np.sin(np.arange(200) / 5.0) + 1
    opening = loudness.copy()
    opening[50:80] = math.nan
    assert sync_figure(opening, loudness, frame_s=0.04).lag_ms == pytest.approx(0.0, abs=1.0)


def test_loudness_envelope_is_the_windowed_rms() -> None:
    samples = np.zeros(16000, dtype=np.float32)
    samples[8000:12000] = 0.5
    envelope = loudness_envelope(samples, 16000, np.array([0.25, 0.625]), 0.04)
    assert envelope[0] == pytest.approx(0.0)
    assert envelope[1] == pytest.approx(0.5, rel=1e-3)


def test_psnr_outside_ignores_the_mouth_box() -> None:
    reference = np.full((64, 64, 3), 100, dtype=np.uint8)
    test = reference.copy()
    test[30:34, 30:34] = 0  # inside the box: not counted
    region = (28, 28, 36, 36)
    assert psnr_outside([reference], [test], [region], margin=2) == math.inf
    test[0, 0] = 110  # outside: one pixel off by 10 in every channel
    expected = 10 * math.log10(255**2 / (100 * 3 / (64 * 64 * 3 - 12 * 12 * 3)))
    assert psnr_outside([reference], [test], [region], margin=2) == pytest.approx(expected)
