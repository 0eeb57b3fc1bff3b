"""Streaming CSM encode/decode against the batch codec (the oracle), and the call sender."""

from __future__ import annotations

import numpy as np
import pytest

from codec.config import CodecConfig
from codec.latent import unpack_codes
from codec.model import decode_codes, encode_to_codes, new_model
from media.call_sender import CallSender, codec_settings
from media.codec_stream import StreamingDecoder, StreamingEncoder
from media.errors import StreamFinishedError
from media.features import SAMPLE_RATE, StreamingLogMel

CONFIGS = [
    CodecConfig(),
    # Odd shapes: left context not a stride multiple, more blocks, less lookahead.
    CodecConfig(stride=3, blocks=3, kernel_size=7, lookahead=1, hidden=16, latent_dim=8),
    CodecConfig(stride=2, blocks=1, kernel_size=3, lookahead=0, hidden=8, latent_dim=4),
]


def _chunks(total: int, rng: np.random.Generator, largest: int) -> list[tuple[int, int]]:
    spans, position = [], 0
    while position < total:
        size = int(rng.integers(1, largest + 1))
        spans.append((position, min(total, position + size)))
        position += size
    return spans


def _speechlike_mel(frames: int, seed: int) -> np.ndarray:
    """Smooth in time and frequency like real log-mel, in Whisper's value range."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(80, frames + 8)).astype(np.float32)
    kernel = np.ones(5, dtype=np.float32) / 5
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), 1, noise)
    return (smooth[:, :frames] * 0.4).astype(np.float32)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.architecture_id)
@pytest.mark.parametrize("frames", [1, 5, 63, 250])
def test_streamed_codes_equal_batch_codes_for_any_chunking(config, frames):
    model = new_model(config)
    mel = _speechlike_mel(frames, seed=frames)
    batch = encode_to_codes(model, mel)
    rng = np.random.default_rng(frames)
    for largest in (1, 7, 50):
        encoder = StreamingEncoder(model)
        parts = [encoder.push(mel[:, a:b]) for a, b in _chunks(frames, rng, largest)]
        parts.append(encoder.finish())
        streamed = np.concatenate(parts)
        assert streamed.dtype == np.uint8
        np.testing.assert_array_equal(streamed, batch)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.architecture_id)
def test_streamed_mel_equals_batch_decode(config):
    model = new_model(config)
    codes = encode_to_codes(model, _speechlike_mel(333, seed=1))
    batch = decode_codes(model, codes)
    rng = np.random.default_rng(2)
    decoder = StreamingDecoder(model)
    parts = [decoder.push(codes[a:b]) for a, b in _chunks(codes.shape[0], rng, 6)]
    parts.append(decoder.finish())
    streamed = np.concatenate(parts, axis=1)
    assert streamed.shape == batch.shape
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.architecture_id)
def test_lookahead_is_bounded(config):
    """A latent frame leaves once R mel frames past it are in; a mel frame once R past it."""
    model = new_model(config)
    right = config.encoder_lookahead_frames
    mel = _speechlike_mel(120, seed=3)
    encoder = StreamingEncoder(model)
    emitted = 0
    for pushed in range(1, 121):
        emitted += encoder.push(mel[:, pushed - 1 : pushed]).shape[0]
        assert emitted == max(0, (pushed - right) // config.stride)
    codes = encode_to_codes(model, mel)
    decoder = StreamingDecoder(model)
    produced = 0
    for received in range(1, codes.shape[0] + 1):
        produced += decoder.push(codes[received - 1 : received]).shape[1]
        assert produced == max(0, received * config.stride - config.decoder_lookahead_frames)


def test_stream_refuses_use_after_finish():
    model = new_model(CodecConfig())
    encoder, decoder = StreamingEncoder(model), StreamingDecoder(model)
    encoder.finish()
    decoder.finish()
    with pytest.raises(StreamFinishedError):
        encoder.push(np.zeros((80, 4), np.float32))
    with pytest.raises(StreamFinishedError):
        decoder.push(np.zeros((1, 32), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        StreamingEncoder(model).push(np.zeros((40, 4), np.float32))


def test_call_sender_frames_are_the_batch_codes_of_the_streamed_features():
    model = new_model(CodecConfig())
    rng = np.random.default_rng(4)
    t = np.arange(int(2.3 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    ) + rng.normal(scale=0.01, size=t.shape).astype(np.float32)
    # The oracle: the same front end over the whole signal, then the batch encoder.
    front_end = StreamingLogMel()
    features = np.concatenate([front_end.push(audio).features, front_end.finish().features], axis=1)
    expected = encode_to_codes(model, features)

    sender = CallSender(model)
    batch = SAMPLE_RATE // 10
    messages = []
    for start in range(0, audio.shape[0], batch):
        messages.extend(sender.push(audio[start : start + batch]))
    messages.extend(sender.finish())
    settings = codec_settings(model, b"\x01" * 32)
    assert [m.seq for m in messages] == list(range(len(messages)))
    position = 0
    decoded = []
    for message in messages:
        assert message.start_time_s == pytest.approx(position / settings.frame_rate_hz)
        position += message.frame_count
        decoded.append(
            unpack_codes(
                message.payload,
                frame_count=message.frame_count,
                latent_dim=settings.latent_dim,
                bits=settings.latent_bits,
            )
        )
    np.testing.assert_array_equal(np.concatenate(decoded), expected)
    # Batched about every 100 ms of audio: 2 or 3 latent frames of 40 ms.
    assert max(m.frame_count for m in messages[:-1]) <= 4
    assert len(sender.latency.samples("encode")) == len(range(0, audio.shape[0], batch)) + 1
