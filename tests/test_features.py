"""The numpy log-mel front end against faster-whisper's FeatureExtractor, batch and streaming."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.audio import load_audio
from media.errors import InvalidAudioError, MediaError, StreamFinishedError
from media.features import (
    DYNAMIC_RANGE,
    N_MELS,
    MelChunk,
    StreamingLogMel,
    frame_count,
    log_mel,
    log_spectrogram,
    mel_filters,
    normalize,
)
from tests.speech import SPEECH_TEXT, synthesize_speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    wav = synthesize_speech(SPEECH_TEXT, tmp_path_factory.mktemp("features") / "speech.wav")
    return load_audio(wav)


def stream_in_chunks(audio: np.ndarray, sizes: list[int]) -> tuple[StreamingLogMel, list[MelChunk]]:
    """Push ``audio`` in chunks of the given sizes (cycled), then finish; return all chunks."""
    stream = StreamingLogMel()
    chunks = []
    position, index = 0, 0
    while position < audio.shape[0]:
        size = sizes[index % len(sizes)]
        chunks.append(stream.push(audio[position : position + size]))
        position += size
        index += 1
    chunks.append(stream.finish())
    return stream, chunks


def test_mel_filters_match_faster_whisper() -> None:
    reference = FeatureExtractor.get_mel_filters(16000, 400, n_mels=80).astype(np.float32)
    ours = mel_filters()
    assert ours.shape == (80, 201)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-7)


def test_log_mel_matches_faster_whisper_on_speech(speech: np.ndarray) -> None:
    reference = FeatureExtractor()(speech)
    ours = log_mel(speech)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape == (N_MELS, speech.shape[0] // 160 + 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    # Real speech, not a degenerate signal: a wide dynamic range reaches the clamp.
    assert ours.max() - ours.min() == pytest.approx(DYNAMIC_RANGE / 4, abs=1e-6)


@pytest.mark.parametrize(
    "n_samples", [0, 1, 150, 199, 200, 201, 359, 399, 400, 401, 560, 16000 + 37]
)
def test_padding_and_frame_count_match_faster_whisper(speech: np.ndarray, n_samples: int) -> None:
    # Short and odd lengths exercise the reflect padding and the dropped last frame.
    audio = speech[8000 : 8000 + n_samples]
    reference = FeatureExtractor()(audio)
    ours = log_mel(audio)
    assert ours.shape == reference.shape
    assert ours.shape[1] == frame_count(n_samples)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)


def test_normalize_is_whisper_clamp_and_scale(speech: np.ndarray) -> None:
    raw = log_spectrogram(speech)
    expected = (np.maximum(raw, raw.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_array_equal(normalize(raw), expected.astype(np.float32))
    np.testing.assert_array_equal(log_mel(speech), normalize(raw))


@pytest.mark.parametrize("sizes", [[1], [160], [400], [37, 1200, 3], [4000], [100_000]])
def test_streaming_log_spec_equals_batch_exactly(speech: np.ndarray, sizes: list[int]) -> None:
    audio = speech[: 16000 * 2 + 77] if sizes == [1] else speech
    _, chunks = stream_in_chunks(audio, sizes)
    streamed = np.concatenate([chunk.log_spec for chunk in chunks], axis=1)
    np.testing.assert_array_equal(streamed, log_spectrogram(audio))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(0, 60_000),
    length=st.integers(0, 6000),
    sizes=st.lists(st.integers(1, 2500), min_size=1, max_size=6),
)
def test_streaming_equals_batch_for_any_chunking(
    speech: np.ndarray, start: int, length: int, sizes: list[int]
) -> None:
    audio = speech[start : start + length]
    stream, chunks = stream_in_chunks(audio, sizes)
    streamed = np.concatenate([chunk.log_spec for chunk in chunks], axis=1)
    np.testing.assert_array_equal(streamed, log_spectrogram(audio))
    assert stream.frames_emitted == frame_count(audio.shape[0])
    assert stream.samples_seen == audio.shape[0]


def test_streaming_normalisation_uses_the_running_maximum(speech: np.ndarray) -> None:
    _, chunks = stream_in_chunks(speech, [1234, 77, 5000])
    features = np.concatenate([chunk.features for chunk in chunks], axis=1)
    raw = log_spectrogram(speech)
    batch = log_mel(speech)
    # The documented relation, computed from the batch log spectrogram alone.
    running_max = np.maximum.accumulate(raw.max(axis=0))
    expected = (np.maximum(raw, running_max[None, :] - 8.0) + 4.0) / 4.0
    np.testing.assert_array_equal(features, expected.astype(np.float32))
    # Consequences: never above the batch value, identical from the loudest frame on.
    assert np.all(features <= batch)
    loudest = int(np.argmax(raw.max(axis=0)))
    np.testing.assert_array_equal(features[:, loudest:], batch[:, loudest:])
    assert loudest > 0  # otherwise the comparison above would be the whole array


def test_frames_are_emitted_as_soon_as_their_window_is_complete(speech: np.ndarray) -> None:
    stream = StreamingLogMel()
    received = 0
    for size in [50, 150, 1, 159, 160, 1000, 3]:
        stream.push(speech[received : received + size])
        received += size
        # Frame k is centred on sample 160 k and needs samples up to 160 k + 199; frame 0
        # also needs sample 200, the far end of its left reflection.
        complete = 0 if received <= 200 else (received - 200) // 160 + 1
        assert stream.frames_emitted == complete


def test_streaming_refuses_input_after_finish(speech: np.ndarray) -> None:
    stream = StreamingLogMel()
    stream.push(speech[:1000])
    stream.finish()
    assert stream.finished
    with pytest.raises(StreamFinishedError):
        stream.push(speech[:10])
    with pytest.raises(StreamFinishedError):
        stream.finish()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 100), dtype=np.float32),
        np.zeros(100, dtype=np.complex64),
        np.array([0.0, np.nan, 0.0]),
        np.array([0.0, np.inf]),
        np.array(["a", "b"]),
    ],
)
def test_bad_waveforms_are_rejected_with_one_line(bad: np.ndarray) -> None:
    with pytest.raises(InvalidAudioError) as caught:
        log_mel(bad)
    assert isinstance(caught.value, MediaError)
    assert "\n" not in str(caught.value)
    with pytest.raises(InvalidAudioError):
        StreamingLogMel().push(bad)


def test_integer_pcm_is_refused_because_its_scale_is_ambiguous() -> None:
    pcm = (np.sin(np.arange(3200) / 5.0) * 1000).astype(np.int16)
    with pytest.raises(InvalidAudioError, match="32768"):
        log_mel(pcm)
