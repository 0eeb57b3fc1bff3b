"""load_audio on real files made with espeak-ng and ffmpeg, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from media.audio import load_audio
from media.errors import AudioFileError, MediaError, SilentAudioError
from tests.speech import SPEECH_TEXT, run_ffmpeg, synthesize_speech


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def speech_wav(files: Path) -> Path:
    return synthesize_speech(SPEECH_TEXT, files / "speech.wav")


def assert_one_line_naming(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "\n" not in message
    assert path.name in message
    assert isinstance(error, MediaError)


def test_wav_matches_faster_whisper_decoder(speech_wav: Path) -> None:
    audio = load_audio(speech_wav)
    # Independent oracle: faster-whisper's decoder (PyAV via s16), same resampler.
    reference = decode_audio(str(speech_wav), sampling_rate=16000)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.shape == reference.shape
    np.testing.assert_allclose(audio, reference, atol=2 / 32768)


def test_flac_is_lossless_against_the_wav(speech_wav: Path, files: Path) -> None:
    flac = files / "speech.flac"
    run_ffmpeg("-i", str(speech_wav), "-c:a", "flac", str(flac))
    np.testing.assert_allclose(load_audio(flac), load_audio(speech_wav), atol=1e-6)


def test_mp3_decodes_to_the_same_speech(speech_wav: Path, files: Path) -> None:
    mp3 = files / "speech.mp3"
    run_ffmpeg("-i", str(speech_wav), "-c:a", "libmp3lame", "-b:a", "64k", str(mp3))
    wav_audio = load_audio(speech_wav)
    mp3_audio = load_audio(mp3)
    # MP3 adds encoder delay and frame padding: a few tens of milliseconds, not more.
    assert abs(mp3_audio.shape[0] - wav_audio.shape[0]) < 0.1 * 16000
    # Same signal after aligning the delay: strong correlation.
    lag = int(np.argmax(np.correlate(mp3_audio[:20000], wav_audio[:16000], mode="valid")))
    aligned = mp3_audio[lag : lag + wav_audio.shape[0]]
    n = min(aligned.shape[0], wav_audio.shape[0])
    assert np.corrcoef(aligned[:n], wav_audio[:n])[0, 1] > 0.95


def test_stereo_44k_is_resampled_to_16k_mono(files: Path) -> None:
    stereo = files / "stereo.wav"
    run_ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1.5:sample_rate=44100",
        "-ac", "2", str(stereo),
    )  # fmt: skip
    audio = load_audio(stereo)
    assert audio.shape[0] == pytest.approx(1.5 * 16000, abs=16)
    assert dominant_frequency(audio) == pytest.approx(440, abs=2)


def dominant_frequency(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[0])))
    return float(np.fft.rfftfreq(audio.shape[0], 1 / 16000)[int(np.argmax(spectrum))])


def test_audio_track_of_a_video(files: Path) -> None:
    video = files / "clip.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=10",
        "-f", "lavfi", "-i", "sine=frequency=1000:duration=2",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(video),
    )  # fmt: skip
    audio = load_audio(video)
    assert audio.shape[0] == pytest.approx(2 * 16000, rel=0.05)
    assert dominant_frequency(audio) == pytest.approx(1000, abs=2)


def test_video_without_audio_is_an_audio_file_error(files: Path) -> None:
    video = files / "mute.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=10", "-c:v", "mpeg4",
               str(video))  # fmt: skip
    with pytest.raises(AudioFileError, match="no audio stream") as caught:
        load_audio(video)
    assert_one_line_naming(caught.value, video)


def test_corrupt_file_is_an_audio_file_error(files: Path) -> None:
    corrupt = files / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(7).bytes(20_000))
    with pytest.raises(AudioFileError) as caught:
        load_audio(corrupt)
    assert_one_line_naming(caught.value, corrupt)


def test_text_file_is_an_audio_file_error(files: Path) -> None:
    text = files / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioFileError) as caught:
        load_audio(text)
    assert_one_line_naming(caught.value, text)


def test_truncated_mp3_keeps_what_decodes(speech_wav: Path, files: Path) -> None:
    mp3 = files / "whole.mp3"
    run_ffmpeg("-i", str(speech_wav), "-c:a", "libmp3lame", str(mp3))
    truncated = files / "truncated.mp3"
    data = mp3.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    audio = load_audio(truncated)
    assert 0 < audio.shape[0] < load_audio(mp3).shape[0]


def test_missing_file_and_directory(files: Path) -> None:
    missing = files / "nope.wav"
    with pytest.raises(AudioFileError, match="no such file") as caught:
        load_audio(missing)
    assert_one_line_naming(caught.value, missing)
    with pytest.raises(AudioFileError, match="not a regular file"):
        load_audio(files)


def test_silent_file_is_a_silent_audio_error(files: Path) -> None:
    silent = files / "silence.wav"
    run_ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1", str(silent))
    with pytest.raises(SilentAudioError) as caught:
        load_audio(silent)
    assert_one_line_naming(caught.value, silent)
    assert not isinstance(caught.value, AudioFileError)


def test_duration_limit(speech_wav: Path) -> None:
    with pytest.raises(AudioFileError, match="limit") as caught:
        load_audio(speech_wav, max_seconds=1.0)
    assert_one_line_naming(caught.value, speech_wav)
