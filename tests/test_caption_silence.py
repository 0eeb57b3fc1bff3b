"""File captioning skips silence with the Silero VAD faster-whisper ships (issue 19): the
decoder gets fewer windows, the words are the same and stay on the recording's clock."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.asr import FeatureTranscriber, Transcript
from media.audio import load_audio
from media.caption_file import caption_recording
from media.speech_spans import group_spans
from media.translate import Translator
from media.wer import wer
from tests.speech import synthesize_speech, whisper_model

pytestmark = pytest.mark.slow

FIRST = "Please send me the report before Friday."
SECOND = "Thank you for coming to the meeting today."
#: Longer than two windows: decoded whole, the recording takes three 30 s windows or more.
SILENCE_S = 70.0


class CountingDecoder:
    """tiny.en, counting the 30 s windows its encoder runs on (what decoding costs)."""

    def __init__(self) -> None:
        self.inner = FeatureTranscriber(whisper_model())
        self.windows = 0

    def transcribe_features(
        self, mel: npt.NDArray[np.float32], *, on_progress: object = None
    ) -> Transcript:
        model = self.inner.model
        encode = model.encode

        def counting_encode(features: npt.NDArray[np.float32]) -> object:
            self.windows += 1
            return encode(features)

        setattr(model, "encode", counting_encode)  # noqa: B010  (a method, shadowed per call)
        try:
            return self.inner.transcribe_features(mel)
        finally:
            delattr(model, "encode")


def _no_translator(source: str, target: str) -> Translator:
    raise AssertionError("no translation asked for")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("silence")
    first = load_audio(synthesize_speech(FIRST, folder / "a.wav"))
    second = load_audio(synthesize_speech(SECOND, folder / "b.wav"))
    quiet = np.zeros(round(SILENCE_S * 16000), dtype=np.float32)
    audio = np.concatenate([first, quiet, second])
    path = folder / "gap.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path, len(first) / 16000 + SILENCE_S


def test_group_spans_joins_what_fits_a_window() -> None:
    spans = [(0, 100), (150, 250), (2000, 2100), (2200, 6000)]
    assert group_spans(spans, window_frames=3000) == [(0, 2100), (2200, 6000)]
    assert group_spans(spans, window_frames=1000) == [(0, 250), (2000, 2100), (2200, 6000)]
    assert group_spans([], window_frames=3000) == []


@pytest.mark.parametrize("skip_silence", [False, True])
def test_silence_is_not_decoded_and_words_keep_their_times(
    recording: tuple[Path, float], tmp_path: Path, skip_silence: bool
) -> None:
    path, second_starts_s = recording
    decoder = CountingDecoder()
    result = caption_recording(
        path,
        out_dir=tmp_path,
        transcriber=decoder,
        translator_factory=_no_translator,
        skip_silence=skip_silence,
    )
    assert result.duration_s > 60
    # Skipped, the silence costs nothing: one window for each sentence.
    if skip_silence:
        assert decoder.windows == 2
    else:
        assert decoder.windows >= 3
    words = [word for cue in result.tracks["en"] for word in cue.words]
    assert wer(f"{FIRST} {SECOND}", " ".join(w.word for w in words)) <= 0.2
    later = [w for w in words if w.start_s > second_starts_s - 1.0]
    assert wer(SECOND, " ".join(w.word for w in later)) <= 0.2
