"""File captioning decodes a recording as ``WhisperModel.transcribe`` does (issue 19, parity).

Material in the style of the caption bench's *tuning* set (a Harvard list read by espeak-ng
en-us, 1 s of silence between sentences, 34 s: longer than one Whisper window), never its
evaluation recordings. Oracle: faster-whisper's own ``transcribe`` on the same file, same model
and settings. parley used to cut the recording into slices of at most 30 s in a VAD pause and
zero-pad each to a window; Whisper then dropped this recording's first sentence ("Always close
the barn door tight") and garbled its last. With the recording handed over whole, faster-
whisper's loop windows it (30 s of real audio, next window at the last complete word) and the
words are the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from media.asr import FeatureTranscriber
from media.audio import load_audio
from media.caption_file import caption_recording
from media.translate import Translator
from media.wer import normalized_words
from simulations.corpus import write_float_wav
from simulations.harvard import HARVARD_LISTS
from tests.speech import require_tool, whisper_model

pytestmark = pytest.mark.slow

#: Harvard list 7: a list of the bench's tuning set (lists 7-10), never of its evaluation set.
SENTENCES = HARVARD_LISTS[6]


def _no_translator(source: str, target: str) -> Translator:
    raise AssertionError("no translation asked for")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    espeak = require_tool("espeak-ng")
    folder = tmp_path_factory.mktemp("parity")
    pause = np.zeros(16000, dtype=np.float32)
    parts: list[np.ndarray] = []
    for index, sentence in enumerate(SENTENCES):
        wav = folder / f"s{index}.wav"
        subprocess.run([espeak, "-v", "en-us", "-w", str(wav), sentence], check=True, timeout=60)
        parts.extend([load_audio(wav), pause])
    path = folder / "list7.wav"
    write_float_wav(path, np.concatenate(parts).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def transcribed(recording: Path) -> list[str]:
    """The oracle: ``WhisperModel.transcribe``'s words, with the settings parley decodes with."""
    audio = load_audio(recording)
    assert len(audio) / 16000 > 30
    segments, _info = whisper_model().transcribe(
        audio,
        language="en",
        beam_size=5,
        word_timestamps=True,
        condition_on_previous_text=False,
    )
    return normalized_words(" ".join(segment.text for segment in segments))


@pytest.mark.parametrize("skip_silence", [True, False])
def test_a_recording_longer_than_a_window_gets_the_words_transcribe_gets(
    recording: Path, transcribed: list[str], tmp_path: Path, skip_silence: bool
) -> None:
    reports: list[float] = []
    result = caption_recording(
        recording,
        out_dir=tmp_path,
        transcriber=FeatureTranscriber(whisper_model()),
        translator_factory=_no_translator,
        skip_silence=skip_silence,
        progress=lambda stage, fraction: (
            reports.append(fraction) if stage == "transcribe" else None
        ),
    )
    assert normalized_words(" ".join(cue.text for cue in result.tracks["en"])) == transcribed
    # A span is decoded whole, and progress still moves inside it (per decoded segment):
    # a recording with no 2 s silence is one span, and would otherwise show none until its end.
    assert len(reports) >= 5, reports
    assert reports == sorted(reports)
