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


def _syllables(seconds: float) -> np.ndarray:
    """A tone broken by a 0.1 s gap every 0.5 s (within the VAD's hangover): the noise floor
    stays low, so it is speech all along, as a long utterance is."""
    audio = _tone(seconds)
    for start in np.arange(0.4, seconds, 0.5):
        audio[round(start * SAMPLE_RATE) : round((start + 0.1) * SAMPLE_RATE)] = 0.0
    return audio


def _decodes_of_a_tone(*, partials: bool, tone_s: float) -> int:
    stand_in = _CountingStandIn()
    settings = StreamingSettings(min_chunk_s=2.0)
    streamer = StreamingTranscriber(stand_in, settings=settings, clock=lambda: 0.0)  # type: ignore[arg-type]
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), _syllables(tone_s)])
    features = log_mel(np.concatenate([audio, np.zeros(2 * SAMPLE_RATE, np.float32)]))
    for start in range(0, features.shape[1], 10):
        streamer.push(features[:, start : start + 10], partials=partials)
    assert streamer.state is StreamState.IDLE
    return stand_in.decodes


def test_a_busy_recognizer_skips_partial_decodes_with_stand_in_transcriber() -> None:
    # 7 s of speech: a decode every 2 s for partials, then the one at the speech offset.
    assert _decodes_of_a_tone(partials=True, tone_s=7.0) == 4
    # Busy: the offset decode alone makes the words final.
    assert _decodes_of_a_tone(partials=False, tone_s=7.0) == 1
    # A monologue past trim_after_s (10 s) is still decoded, so the buffer stays bounded.
    assert _decodes_of_a_tone(partials=False, tone_s=14.0) >= 2
