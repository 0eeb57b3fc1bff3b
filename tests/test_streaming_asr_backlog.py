"""``StreamingTranscriber.backlog_s``: speech pushed since the last decode (for admission)."""

from __future__ import annotations

import numpy as np

from media.asr import DecodeOptions, Transcript
from media.features import SAMPLE_RATE, log_mel
from media.streaming_asr import StreamingSettings, StreamingTranscriber, StreamState


class _CountingStandIn:
    """Stands in for a FeatureTranscriber: counts decodes and hears nothing."""

    options = DecodeOptions()

    def __init__(self) -> None:
        self.decodes = 0

    def transcribe_features(self, mel: object, *, options: object = None) -> Transcript:
        self.decodes += 1
        return Transcript(language="en", duration_s=0.0)


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_backlog_counts_speech_since_the_last_decode_with_stand_in_transcriber() -> None:
    stand_in = _CountingStandIn()
    settings = StreamingSettings(min_chunk_s=2.0)
    streamer = StreamingTranscriber(stand_in, settings=settings, clock=lambda: 0.0)  # type: ignore[arg-type]
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), _tone(3.0)])
    features = log_mel(np.concatenate([audio, np.zeros(2 * SAMPLE_RATE, np.float32)]))
    assert streamer.backlog_s == 0.0
    seen = []
    for start in range(0, features.shape[1], 10):
        before = stand_in.decodes
        streamer.push(features[:, start : start + 10])
        if stand_in.decodes > before:
            seen.append(("decoded", streamer.backlog_s))
        elif streamer.state is StreamState.SPEAKING:
            seen.append(("speaking", streamer.backlog_s))
    speaking = [value for kind, value in seen if kind == "speaking"]
    # It grows while speech waits for a decode, up to about min_chunk_s, and a decode clears it.
    assert max(speaking) >= 1.5
    assert max(speaking) <= settings.min_chunk_s + 0.1
    assert all(value == 0.0 for kind, value in seen if kind == "decoded")
    assert streamer.state is StreamState.IDLE and streamer.backlog_s == 0.0
