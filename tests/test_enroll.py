"""Enrollment: bad recordings are refused by name before anything is written; good ones train."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from codec.config import CodecConfig
from codec.errors import CheckpointError
from codec.model import new_model, state_to_numpy
from daemon.enroll import EnrollmentError, enroll, load_features
from fl.config import TrainConfig
from tests.speech import synthesize_speech

CODEC = CodecConfig()
TRAIN = TrainConfig(steps=40, batch_size=8)


def _write_silence(path: Path, seconds: float = 1.0) -> Path:
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(16000)
        stream.writeframes(bytes(int(32000 * seconds)))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("enroll-speech")
    return synthesize_speech(
        "Federated learning keeps every recording on the device that made it.", folder / "me.wav"
    )


@pytest.mark.parametrize(
    ("bad_name", "writer", "message"),
    [
        ("notes.wav", lambda p: p.write_text("this is not audio"), "cannot read audio"),
        ("quiet.wav", _write_silence, "silent"),
        ("absent.wav", lambda p: None, "no such file"),
        ("blip.wav", lambda p: _write_silence(p, 0.1), "silent"),
    ],
)
def test_a_bad_recording_is_named_and_nothing_changes(
    tmp_path: Path, speech_wav: Path, bad_name: str, writer: object, message: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    checkpoint_path = data / "codec.ckpt"
    save_checkpoint(
        checkpoint_path, Checkpoint(codec_config=CODEC, state=state_to_numpy(new_model(CODEC)))
    )
    bad = tmp_path / bad_name
    writer(bad)  # type: ignore[operator]
    before = _snapshot(data)
    with pytest.raises(EnrollmentError, match=message) as caught:
        enroll(
            [speech_wav, bad],
            checkpoint_path=checkpoint_path,
            features_dir=data / "features",
            codec_config=CODEC,
            train_config=TRAIN,
        )
    text = str(caught.value)
    assert bad_name in text and "\n" not in text
    assert _snapshot(data) == before


def test_a_too_short_recording_is_named(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(16000)
        stream.writeframes((np.sin(np.arange(3200) * 0.2) * 8000).astype("<i2").tobytes())
    with pytest.raises(EnrollmentError, match=r"short\.wav.*shorter"):
        enroll(
            [short],
            checkpoint_path=tmp_path / "c",
            features_dir=tmp_path / "f",
            codec_config=CODEC,
            train_config=TRAIN,
        )
    assert list(tmp_path.iterdir()) == [short]


def test_enroll_trains_stores_features_and_resumes(tmp_path: Path, speech_wav: Path) -> None:
    checkpoint_path = tmp_path / "codec.ckpt"
    features_dir = tmp_path / "features"
    steps: list[int] = []
    first = enroll(
        [speech_wav],
        checkpoint_path=checkpoint_path,
        features_dir=features_dir,
        codec_config=CODEC,
        train_config=TRAIN,
        progress=lambda step, total, loss: steps.append(step),
    )
    assert steps == list(range(1, 41))
    assert not first.resumed_from_checkpoint
    assert first.l1_after < 0.7 * first.l1_before
    stored = load_features(features_dir)
    assert len(stored) == 1 and first.total_frames == stored[0].shape[1]
    saved = load_checkpoint(checkpoint_path)
    assert saved.sample_count == first.total_frames
    assert saved.codec_config == CODEC

    # Enrolling the same recording again resumes from the checkpoint and stores nothing new.
    second = enroll(
        [speech_wav],
        checkpoint_path=checkpoint_path,
        features_dir=features_dir,
        codec_config=CODEC,
        train_config=TRAIN,
    )
    assert second.resumed_from_checkpoint
    assert second.l1_before == pytest.approx(first.l1_after, rel=1e-5)
    assert len(load_features(features_dir)) == 1


def test_a_checkpoint_of_another_architecture_is_refused_before_any_write(
    tmp_path: Path, speech_wav: Path
) -> None:
    other = CodecConfig(hidden=16)
    checkpoint_path = tmp_path / "codec.ckpt"
    save_checkpoint(
        checkpoint_path, Checkpoint(codec_config=other, state=state_to_numpy(new_model(other)))
    )
    with pytest.raises(CheckpointError, match="codec.ckpt"):
        enroll(
            [speech_wav],
            checkpoint_path=checkpoint_path,
            features_dir=tmp_path / "f",
            codec_config=CODEC,
            train_config=TRAIN,
        )
    assert not (tmp_path / "f").exists()


def test_a_corrupt_stored_feature_file_is_named(tmp_path: Path, speech_wav: Path) -> None:
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    (features_dir / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(EnrollmentError, match=r"broken\.npy"):
        enroll(
            [speech_wav],
            checkpoint_path=tmp_path / "c",
            features_dir=features_dir,
            codec_config=CODEC,
            train_config=TRAIN,
        )
    assert not (tmp_path / "c").exists()
