"""The Opus baseline: a real libopus round trip, aligned, at the bitrate it claims."""

from __future__ import annotations

import numpy as np
import pytest

from media.audio import load_audio
from media.errors import InvalidAudioError
from media.opus_baseline import OPUS_MIN_BITRATE_BPS, OpusError, opus_round_trip
from media.wer import wer
from tests.speech import SPEECH_TEXT, synthesize_speech, whisper_model


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return load_audio(synthesize_speech(SPEECH_TEXT, tmp_path_factory.mktemp("opus") / "s.wav"))


def best_lag(decoded: np.ndarray, original: np.ndarray, max_lag: int = 400) -> int:
    lags = range(-max_lag, max_lag + 1)
    return max(lags, key=lambda lag: float(np.dot(np.roll(decoded, -lag), original)))


@pytest.mark.parametrize("bitrate", [6_000, 16_000])
def test_round_trip_keeps_length_alignment_and_bitrate(speech: np.ndarray, bitrate: int) -> None:
    result = opus_round_trip(speech, bitrate_bps=bitrate)
    assert result.audio.shape == speech.shape
    assert result.audio.dtype == np.float32
    assert result.duration_s == pytest.approx(len(speech) / 16_000)
    # One packet per 20 ms frame (the last one zero-padded), plus one that the encoder's
    # look-ahead (its pre-skip) pushes out at the end.
    assert result.packets == -(-len(speech) // 320) + 1
    # Measured from the packets, VBR lands near the target.
    assert 0.7 * bitrate / 1000 < result.kbps < 1.2 * bitrate / 1000
    # The decoded audio lines up with the input (pre-skip handled), within a few samples.
    assert abs(best_lag(result.audio, speech)) <= 5
    correlation = np.corrcoef(result.audio, speech)[0, 1]
    assert correlation > 0.3


def test_whisper_still_transcribes_opus_audio(speech: np.ndarray) -> None:
    model = whisper_model()
    decoded = opus_round_trip(speech, bitrate_bps=16_000).audio
    # faster-whisper's own transcribe() (its own front end) is the oracle here.
    segments, _ = model.transcribe(decoded, language="en", beam_size=5)
    text = " ".join(segment.text for segment in segments)
    assert wer(SPEECH_TEXT, text) <= 0.2, text


def test_bad_settings_and_input_are_refused(speech: np.ndarray) -> None:
    with pytest.raises(OpusError, match="bitrate"):
        opus_round_trip(speech, bitrate_bps=OPUS_MIN_BITRATE_BPS - 1)
    with pytest.raises(OpusError, match="frame duration"):
        opus_round_trip(speech, bitrate_bps=8_000, frame_ms=25)
    with pytest.raises(OpusError, match="empty"):
        opus_round_trip(np.zeros(0, dtype=np.float32), bitrate_bps=8_000)
    with pytest.raises(InvalidAudioError):
        opus_round_trip(np.full(100, np.nan, dtype=np.float32), bitrate_bps=8_000)
    with pytest.raises(InvalidAudioError):
        opus_round_trip(np.zeros((2, 100), dtype=np.float32), bitrate_bps=8_000)
