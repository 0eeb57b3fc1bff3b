"""What file captioning hands its decoder (issue 19): a long recording whole (faster-whisper's
loop windows it), the VAD's pauses and groups, and words that faster-whisper's timing split
kept whole."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.asr import Segment, Transcript, Word
from media.caption_file import caption_recording
from media.speech_spans import SpeechMap
from media.translate import Translator


def test_speech_map_pauses_and_groups() -> None:
    speech = SpeechMap(spans=((50, 300), (350, 600), (1000, 1200)), total_frames=1500)
    assert speech.pauses() == [(0, 50), (300, 350), (600, 1000), (1200, 1500)]
    # Silences under 2 s stay inside; 400 ms of padding, split in the middle when short.
    assert speech.speech_groups() == [(10, 640), (960, 1240)]
    assert speech.speech_groups(min_silence_s=5.0) == [(10, 1240)]
    assert speech.speech_groups(min_silence_s=0.3, pad_s=0.4) == [
        (10, 325),
        (325, 640),
        (960, 1240),
    ]
    assert SpeechMap(spans=(), total_frames=10).speech_groups() == []
    assert SpeechMap(spans=(), total_frames=10).pauses() == []


class RecordingStandIn:
    """A stand-in decoder: records the windows it gets and answers with fixed words."""

    def __init__(self, words: tuple[Word, ...]) -> None:
        self.windows: list[npt.NDArray[np.float32]] = []
        self.words = words

    def transcribe_features(
        self, mel: npt.NDArray[np.float32], *, on_progress: object = None
    ) -> Transcript:
        self.windows.append(np.array(mel))
        segment = Segment(
            start_s=0.0, end_s=2.0, text="".join(w.word for w in self.words), words=self.words
        )
        return Transcript(language="en", duration_s=30.0, segments=(segment,))


def _no_translator(source: str, target: str) -> Translator:
    raise AssertionError("no translation asked for")


def _write(path: Path, audio: npt.NDArray[np.float32]) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_a_long_recording_is_handed_over_whole_and_split_words_are_joined_with_stand_in_decoder(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    noise = 0.3 * rng.standard_normal(16000 * 28)
    audio = np.concatenate([noise, np.zeros(16000 * 4), noise[: 16000 * 3]])
    words = (
        Word(word=" Close", start_s=0.1, end_s=0.5, probability=0.9),
        Word(word=" d", start_s=0.5, end_s=0.6, probability=0.5),
        Word(word="'orteit.", start_s=0.6, end_s=1.0, probability=0.5),
    )
    decoder = RecordingStandIn(words)
    result = caption_recording(
        _write(tmp_path / "long.wav", audio.astype(np.float32)),
        out_dir=tmp_path / "out",
        transcriber=decoder,
        translator_factory=_no_translator,
        skip_silence=False,  # what the VAD makes of noise is not this test's business
    )
    # Not cut into slices of at most one window: the decoder's own loop windows the 35 s (each
    # window full of real audio, as WhisperModel.transcribe does), with the one frame log_mel's
    # layout ends with.
    (whole,) = decoder.windows
    assert whole.shape[1] == 3500 + 1
    cues = result.tracks["en"]
    assert cues[0].text == "Close d'orteit."
    assert [w.word for w in cues[0].words] == ["Close", "d'orteit."]
    assert cues[0].words[1].start_s == 0.5 and cues[0].words[1].end_s == 1.0
