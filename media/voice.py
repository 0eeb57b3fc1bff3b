"""The sender's voice traits, measured from the features the receiver actually has.

A call's receiver never sees the sender's waveform, only Whisper log-mel frames (docs/design.md,
"Calls"): 80 Slaney mel bands over 0-8 kHz, a 25 ms Hann window, 100 frames a second. Two traits are
measured there and carried as :class:`schemas.messages.VoiceTraits`, so the synthesized
translation keeps the speaker's register and pace.

Median pitch (Hz)
-----------------
Below 1 kHz the Slaney bands are linear, 66.7 Hz apart, so the harmonics of a voiced frame leave
a ripple across the lowest bands. That ripple is too coarsely sampled to read off directly (a
100 Hz voice aliases against the band spacing), so the estimator is model-based: for every
candidate F0 from 60 to 400 Hz, in 1 Hz steps, it predicts the band energies a flat harmonic comb
would give through the same window and filterbank, and picks the candidate whose ripple (the log
band energies minus their local 3-band mean) best explains the frame's, by least squares with a
gain in [0.4, 1] (jitter and breath only ever make the ripple shallower). The median over the
frames of speech is the voice's pitch. Measured against a YIN tracker on the waveform
(tests/test_voice.py), espeak-ng voices from 73 to 296 Hz come within a few percent; the low,
natural piper "joe" voice (YIN 91 Hz) reads about 20 % high, because its harmonics smear within a
25 ms window. The ordering of voices, which is what synthesis needs, holds throughout.

Speaking rate (words per second)
--------------------------------
Words come from the ASR (a count the caller passes in); the time is the speech time in the
features: frames within 30 dB of the loud frames, with gaps under 0.3 s bridged (stop closures
and breaths inside a phrase count as speaking, pauses between phrases do not). Words per second
of speech time is what ``VoiceTraits.speaking_rate_wps`` holds, and synthesizers calibrate their
own rate with the same measure (media/tts.py).
"""

from __future__ import annotations

import functools
import itertools
from typing import Final

import numpy as np
import numpy.typing as npt

from media.errors import InvalidFeaturesError, MediaError
from media.features import FRAMES_PER_SECOND, N_FFT, N_MELS, SAMPLE_RATE, mel_filters
from schemas.messages import VoiceTraits

__all__ = [
    "PITCH_MAX_HZ",
    "PITCH_MIN_HZ",
    "NoSpeechError",
    "measure_voice_traits",
    "median_pitch_hz",
    "speaking_rate_wps",
    "speech_frames",
    "speech_seconds",
]

FloatArray = npt.NDArray[np.float32]

PITCH_MIN_HZ: Final = 60.0
PITCH_MAX_HZ: Final = 400.0
_PITCH_STEP_HZ: Final = 1.0
#: Bands used for pitch: up to ~2 kHz, where single harmonics still shape a band.
_PITCH_BANDS: Final = 28
#: Harmonics above this add nothing to the bands used.
_HARMONIC_LIMIT_HZ: Final = 4000.0
_RIPPLE_WINDOW: Final = 3
_MIN_GAIN: Final = 0.4
_MAX_GAIN: Final = 1.0
#: Frames within this many dB of the loud frames (99th percentile) are speech.
_SPEECH_RANGE_DB: Final = 30.0
#: Frames quieter than this are silence whatever the loudest frame (in the units of the band-power
#: sum; white noise at -65 dBFS RMS lands here), so a silent recording holds no speech.
_SILENCE_FLOOR_DB: Final = -40.0
#: Silences shorter than this inside speech still count as speaking time.
_BRIDGED_GAP_S: Final = 0.3


class NoSpeechError(MediaError):
    """The features hold no frame of speech, so there is no voice to measure."""


def _check_features(features: npt.ArrayLike) -> FloatArray:
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] != N_MELS:
        raise InvalidFeaturesError(f"expected log-mel features of shape (80, T), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidFeaturesError(f"expected float log-mel features, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InvalidFeaturesError("log-mel features hold NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _log10_power(features: FloatArray) -> npt.NDArray[np.float64]:
    # Undo Whisper's (x + 4) / 4 normalisation: back to log10 band power (floored at max - 8).
    return features.astype(np.float64) * 4.0 - 4.0


def speech_frames(features: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Which frames are speech: within 30 dB of the loud frames, not silent, short gaps bridged."""
    log_power = _log10_power(_check_features(features))
    if log_power.shape[1] == 0:
        return np.zeros(0, dtype=bool)
    frame_db = 10.0 * np.log10(np.sum(10.0**log_power, axis=0))
    loud = np.percentile(frame_db, 99)
    speech: npt.NDArray[np.bool_] = (frame_db > loud - _SPEECH_RANGE_DB) & (
        frame_db > _SILENCE_FLOOR_DB
    )
    # Bridge short gaps between speech frames.
    longest_gap = round(_BRIDGED_GAP_S * FRAMES_PER_SECOND)
    indices = np.flatnonzero(speech)
    for left, right in itertools.pairwise(indices):
        if 1 < right - left <= longest_gap:
            speech[left:right] = True
    return speech


def speech_seconds(features: npt.ArrayLike) -> float:
    """Seconds of speaking time in ``features`` (see the module docstring)."""
    return float(np.count_nonzero(speech_frames(features))) / FRAMES_PER_SECOND


def _local_ripple(log_bands: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Log band energies minus their local mean across bands (removes the spectral envelope)."""
    half = _RIPPLE_WINDOW // 2
    padded = np.pad(log_bands, [(0, 0), (half, half)], mode="edge")
    kernel = np.ones(_RIPPLE_WINDOW) / _RIPPLE_WINDOW
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), 1, padded)
    ripple = (log_bands - smooth)[:, 1:]  # band 0 (DC) carries no harmonic
    centred: npt.NDArray[np.float64] = ripple - ripple.mean(axis=1, keepdims=True)
    return centred


@functools.cache
def _pitch_templates() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(candidates in Hz, predicted ripple of a flat harmonic comb per candidate)."""
    candidates = np.arange(PITCH_MIN_HZ, PITCH_MAX_HZ + _PITCH_STEP_HZ / 2, _PITCH_STEP_HZ)
    # The Hann window's power response on a 1 Hz grid: one harmonic at h*f0 puts
    # kernel[|bin_hz - h*f0|] into each FFT bin (harmonics add incoherently).
    window = np.hanning(N_FFT + 1)[:-1]
    kernel = np.abs(np.fft.rfft(window, n=SAMPLE_RATE)) ** 2
    bin_hz = np.fft.rfftfreq(N_FFT, d=1.0 / SAMPLE_RATE)
    filters = mel_filters().astype(np.float64)[:_PITCH_BANDS]
    log_bands = np.empty((candidates.size, _PITCH_BANDS))
    for row, f0 in enumerate(candidates):
        harmonics = f0 * np.arange(1, int(_HARMONIC_LIMIT_HZ // f0) + 1)
        offsets = np.abs(bin_hz[None, :] - harmonics[:, None])
        power = np.interp(offsets, np.arange(kernel.size), kernel).sum(axis=0)
        log_bands[row] = np.log10(filters @ power + 1e-12)
    return candidates, _local_ripple(log_bands)


def _frame_pitches(log_power: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per-frame best F0 (Hz), NaN where no comb explains the ripple."""
    candidates, templates = _pitch_templates()
    observed = _local_ripple(log_power[:_PITCH_BANDS].T)
    template_energy = np.sum(templates**2, axis=1)
    cross = observed @ templates.T
    gain = np.clip(cross / template_energy, _MIN_GAIN, _MAX_GAIN)
    observed_energy = np.sum(observed**2, axis=1, keepdims=True)
    residual = observed_energy - 2 * gain * cross + gain**2 * template_energy
    best = np.argmin(residual, axis=1)
    explained = 1.0 - residual[np.arange(best.size), best] / np.maximum(
        observed_energy[:, 0], 1e-12
    )
    return np.where(explained > 0.0, candidates[best], np.nan)


def median_pitch_hz(features: npt.ArrayLike) -> float:
    """The median F0 over the frames of speech; :class:`NoSpeechError` if there are none."""
    checked = _check_features(features)
    speech = speech_frames(checked)
    if not np.any(speech):
        raise NoSpeechError("no speech in the features: cannot measure a pitch")
    pitches = _frame_pitches(_log10_power(checked)[:, speech])
    voiced = pitches[np.isfinite(pitches)]
    if voiced.size == 0:
        raise NoSpeechError("no voiced frame in the features: cannot measure a pitch")
    return float(np.median(voiced))


def speaking_rate_wps(features: npt.ArrayLike, word_count: int) -> float:
    """Words per second of speaking time; ``word_count`` comes from the ASR."""
    if word_count < 0:
        raise ValueError(f"word_count must be >= 0, got {word_count}")
    seconds = speech_seconds(features)
    if seconds <= 0:
        raise NoSpeechError("no speech in the features: cannot measure a speaking rate")
    return word_count / seconds


def measure_voice_traits(features: npt.ArrayLike, *, word_count: int) -> VoiceTraits:
    """Median pitch and speaking rate of the speech in ``features`` (module docstring)."""
    checked = _check_features(features)
    return VoiceTraits(
        median_pitch_hz=median_pitch_hz(checked),
        speaking_rate_wps=speaking_rate_wps(checked, word_count),
    )
