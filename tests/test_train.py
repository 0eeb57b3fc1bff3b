"""Training on real (espeak-ng) speech features: loss goes down, runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.config import CodecConfig
from codec.latent import dequantize, quantize
from codec.model import new_model, state_to_numpy
from fl.config import TrainConfig
from fl.train import encode_decode, evaluate_l1, quantize_for_training, train_codec
from media.audio import load_audio
from media.features import log_mel
from tests.speech import synthesize_speech

SENTENCES = (
    "The quick brown fox jumps over the lazy dog. Peer to peer calls need good captions.",
    "Please call me back when you arrive at the station tomorrow morning.",
)


@pytest.fixture(scope="module")
def speech_features(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("speech")
    return [
        log_mel(load_audio(synthesize_speech(text, folder / f"s{i}.wav")))
        for i, text in enumerate(SENTENCES)
    ]


def test_training_reduces_l1_on_real_speech(speech_features: list[np.ndarray]) -> None:
    model = new_model(CodecConfig())
    before = evaluate_l1(model, speech_features)
    report = train_codec(model, speech_features, TrainConfig(steps=60, batch_size=8))
    after = evaluate_l1(model, speech_features)
    assert report.steps_run == 60 and not report.stopped_early
    assert report.frames_available == sum(f.shape[1] for f in speech_features)
    assert report.final_loss < 0.6 * report.first_loss
    assert after < 0.6 * before, (before, after)


def test_same_seed_same_model_other_seed_other_model(speech_features: list[np.ndarray]) -> None:
    def run(seed: int) -> dict[str, np.ndarray]:
        model = new_model(CodecConfig(hidden=16))
        train_codec(model, speech_features, TrainConfig(steps=5, batch_size=4, seed=seed))
        return state_to_numpy(model)

    first, second, other = run(0), run(0), run(1)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_progress_stop_and_thread_setting(speech_features: list[np.ndarray]) -> None:
    seen: list[tuple[int, int, float]] = []
    threads_before = torch.get_num_threads()
    model = new_model(CodecConfig(hidden=16))
    report = train_codec(
        model,
        speech_features,
        TrainConfig(steps=50, batch_size=2, threads=1, quantization="noise"),
        progress=lambda step, total, loss: seen.append((step, total, loss)),
        stop=lambda: len(seen) >= 4,
    )
    assert report.stopped_early and report.steps_run == 4
    assert [(s, t) for s, t, _ in seen] == [(1, 50), (2, 50), (3, 50), (4, 50)]
    assert [loss for *_, loss in seen] == list(report.losses)
    assert torch.get_num_threads() == threads_before
    assert not model.training


def test_short_sequences_are_padded_and_masked() -> None:
    rng = np.random.default_rng(0)
    short = [
        rng.normal(size=(80, 7)).astype(np.float32),
        rng.normal(size=(80, 300)).astype(np.float32),
    ]
    report = train_codec(
        new_model(CodecConfig(hidden=16)), short, TrainConfig(steps=3, crop_frames=64)
    )
    assert report.steps_run == 3 and all(np.isfinite(report.losses))


def test_bad_features_are_value_errors() -> None:
    model = new_model(CodecConfig(hidden=16))
    with pytest.raises(ValueError, match="no features"):
        train_codec(model, [], TrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"features\[0\]"):
        train_codec(model, [np.zeros((40, 10), np.float32)], TrainConfig(steps=1))
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_l1(model, [np.full((80, 10), np.inf, np.float32)])


def test_ste_forward_is_the_wire_quantizer() -> None:
    latent = torch.rand(3, 32, 17) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    for bits in (2, 5, 8):
        got = quantize_for_training(latent, bits, "ste", generator).numpy()
        wire = dequantize(quantize(latent.numpy(), bits), bits)
        np.testing.assert_allclose(got, wire, atol=1e-6)
    latent.requires_grad_(True)
    quantize_for_training(latent, 5, "ste", generator).sum().backward()  # type: ignore[no-untyped-call]
    assert latent.grad is not None and torch.all(latent.grad == 1.0)


def test_evaluate_l1_is_the_mean_error_of_encode_decode(speech_features: list[np.ndarray]) -> None:
    model = new_model(CodecConfig())
    mel = speech_features[0]
    decoded = encode_decode(model, mel)
    assert decoded.shape == mel.shape and decoded.dtype == np.float32
    assert evaluate_l1(model, [mel]) == pytest.approx(float(np.abs(decoded - mel).mean()), rel=1e-6)


def test_speech_fixture_is_real_speech(speech_features: list[np.ndarray]) -> None:
    # Guards the oracle: a few seconds of log-mel in Whisper's normalised range.
    for features in speech_features:
        assert features.shape[0] == 80 and features.shape[1] > 200
        assert features.min() >= -1.5 and features.max() <= 2.0
