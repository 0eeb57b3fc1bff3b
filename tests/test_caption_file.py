"""Captioning recordings: espeak-ng speech and an ffmpeg-made video through the real tiny.en,
checked with two independent subtitle parsers, WER against the script, faster-whisper's own
``transcribe`` for timings, and the translator itself for the translated track."""

from __future__ import annotations

import functools
import html
import wave
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from media.asr import FeatureTranscriber, Transcript
from media.audio import load_audio
from media.caption_file import (
    CaptionFileError,
    CaptionResult,
    caption_recording,
)
from media.captions import CaptionLayout, Cue, retime_text
from media.errors import AudioFileError, SilentAudioError
from media.features import FloatArray
from media.translate import (
    TranslationConfig,
    Translator,
    UnsupportedLanguagePairError,
    select_translator,
)
from media.wer import wer
from tests.speech import run_ffmpeg, synthesize_speech, whisper_model

pytestmark = pytest.mark.slow

# Chosen among a few candidates as one that espeak-ng's en-gb voice says intelligibly to tiny.en,
# clean and mixed with a tone alike: the test is about captioning, not about espeak's diction.
SCRIPT = "Thank you for coming to the meeting today. Please send me the report before Friday."


@functools.cache
def translator_for(source: str, target: str) -> Translator:
    return select_translator(source, target, TranslationConfig())


@pytest.fixture(scope="module")
def transcriber() -> FeatureTranscriber:
    return FeatureTranscriber(whisper_model())


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_speech(SCRIPT, tmp_path_factory.mktemp("speech") / "talk.wav")


def _srt_cues(path: Path) -> list[srt.Subtitle]:
    return list(srt.parse(path.read_text(encoding="utf-8")))


def _check_tracks_agree(result: CaptionResult, language: str) -> list[srt.Subtitle]:
    """The SRT and WebVTT of one language, parsed independently, carry the same cues."""
    from_srt = _srt_cues(result.outputs[f"{language}.srt"])
    from_vtt = webvtt.read(str(result.outputs[f"{language}.vtt"])).captions
    assert len(from_srt) == len(from_vtt) > 0
    for a, b in zip(from_srt, from_vtt, strict=True):
        assert round(a.start.total_seconds() * 1000) == b.start_time.in_milliseconds()
        assert round(a.end.total_seconds() * 1000) == b.end_time.in_milliseconds()
        assert a.content.split("\n") == [html.unescape(line) for line in b.lines]
    return from_srt


def _check_layout(cues: list[srt.Subtitle], duration_s: float) -> None:
    layout = CaptionLayout()
    previous_end = 0.0
    for cue in cues:
        lines = cue.content.split("\n")
        assert 1 <= len(lines) <= layout.max_lines
        assert all(len(line) <= layout.max_line_chars for line in lines)
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert previous_end - 1e-3 <= start < end <= duration_s + 1e-3
        previous_end = end


def test_wav_gives_source_and_translated_tracks(
    speech_wav: Path, transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    stages: list[tuple[str, float]] = []
    out_dir = tmp_path / "captions"
    result = caption_recording(
        speech_wav,
        out_dir=out_dir,
        transcriber=transcriber,
        translator_factory=translator_for,
        to_languages=["pt"],
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )

    assert result.language == "en"
    assert {key: path.name for key, path in result.outputs.items()} == {
        "en.srt": "talk.en.srt",
        "en.vtt": "talk.en.vtt",
        "pt.srt": "talk.pt.srt",
        "pt.vtt": "talk.pt.vtt",
    }
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        p.name for p in result.outputs.values()
    )  # no temp files left behind
    assert result.duration_s == pytest.approx(len(load_audio(speech_wav)) / 16_000, abs=0.02)

    english = _check_tracks_agree(result, "en")
    assert len(english) == result.cue_count
    _check_layout(english, result.duration_s)
    text = " ".join(cue.content.replace("\n", " ") for cue in english)
    assert wer(SCRIPT, text) <= 0.15, text

    # Timing oracle: faster-whisper's own pipeline (its front end, its VAD-free transcribe).
    reference, _info = whisper_model().transcribe(str(speech_wav), word_timestamps=True)
    reference_words = [word for segment in reference for word in segment.words or ()]
    assert english[0].start.total_seconds() == pytest.approx(reference_words[0].start, abs=0.3)
    assert english[-1].end.total_seconds() >= reference_words[-1].end - 0.3

    # The translated track is the translator's output for each English cue, on its timing.
    portuguese = _check_tracks_agree(result, "pt")
    _check_layout(portuguese, result.duration_s)
    source_cues = [
        Cue(
            index=cue.index,
            start_s=cue.start.total_seconds(),
            end_s=cue.end.total_seconds(),
            lines=tuple(cue.content.split("\n")),
        )
        for cue in english
    ]
    translations = translator_for("en", "pt").translate([cue.text for cue in source_cues])
    expected = retime_text(source_cues, translations)
    assert [tuple(cue.content.split("\n")) for cue in portuguese] == [c.lines for c in expected]
    for got, want in zip(portuguese, expected, strict=True):
        assert got.start.total_seconds() == pytest.approx(want.start_s, abs=2e-3)
        assert got.end.total_seconds() == pytest.approx(want.end_s, abs=2e-3)

    fractions = [fraction for _stage, fraction in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [stage for stage, _ in stages][-1] == "done"
    assert any(stage == "transcribe" for stage, _ in stages)


def test_video_with_a_tone_is_captioned(
    speech_wav: Path, transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    video = tmp_path / "lecture.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=9",
        "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100:duration=9",
        "-i", str(speech_wav),
        "-filter_complex",
        "[1:a]volume=0.03[tone];[2:a]apad=whole_dur=9[voice];"
        "[voice][tone]amix=inputs=2:duration=first:normalize=0[audio]",
        "-map", "0:v", "-map", "[audio]",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest",
        str(video),
    )  # fmt: skip
    result = caption_recording(
        video, out_dir=tmp_path / "out", transcriber=transcriber, translator_factory=translator_for
    )
    assert set(result.outputs) == {"en.srt", "en.vtt"}
    assert result.outputs["en.vtt"].name == "lecture.en.vtt"
    cues = _check_tracks_agree(result, "en")
    _check_layout(cues, result.duration_s)
    text = " ".join(cue.content.replace("\n", " ") for cue in cues)
    assert wer(SCRIPT, text) <= 0.15, text


def _write_wav(path: Path, audio: np.ndarray, rate: int = 16_000) -> Path:
    samples = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    return path


def test_long_recording_is_decoded_in_slices_on_one_clock(
    speech_wav: Path, transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    """Two utterances 2 s apart, spans of at most 10 s: the 2 s silence parts them, each is
    decoded on its own and the second utterance's cues sit where it was spoken."""
    speech = load_audio(speech_wav)
    gap = np.zeros(32_000, dtype=np.float32)
    long_wav = _write_wav(tmp_path / "twice.wav", np.concatenate([speech, gap, speech]))
    second_onset_s = (len(speech) + len(gap)) / 16_000
    stages: list[str] = []
    result = caption_recording(
        long_wav,
        out_dir=tmp_path / "out",
        transcriber=transcriber,
        translator_factory=translator_for,
        progress=lambda stage, _fraction: stages.append(stage),
        window_s=10.0,
    )
    assert stages.count("transcribe") >= 2  # per decoded segment, so at least one per span
    cues = _check_tracks_agree(result, "en")
    _check_layout(cues, result.duration_s)
    text = " ".join(cue.content.replace("\n", " ") for cue in cues)
    assert wer(f"{SCRIPT} {SCRIPT}", text) <= 0.15, text
    later = [cue for cue in cues if cue.start.total_seconds() >= second_onset_s - 0.5]
    later_text = " ".join(cue.content.replace("\n", " ") for cue in later)
    assert wer(SCRIPT, later_text) <= 0.15, later_text


def test_corrupt_file_raises_one_line_and_writes_nothing(
    transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    out_dir = tmp_path / "out"
    with pytest.raises(AudioFileError) as caught:
        caption_recording(
            corrupt, out_dir=out_dir, transcriber=transcriber, translator_factory=translator_for
        )
    assert "\n" not in str(caught.value) and "broken.wav" in str(caught.value)
    assert not out_dir.exists()


def test_silent_file_raises_and_writes_nothing(
    transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    silent = _write_wav(tmp_path / "quiet.wav", np.zeros(16_000, dtype=np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(SilentAudioError):
        caption_recording(
            silent, out_dir=out_dir, transcriber=transcriber, translator_factory=translator_for
        )
    assert list(out_dir.iterdir()) == []


class _CountingTranscriber:
    """The real transcriber, counting calls (to prove a request failed before decoding)."""

    def __init__(self, inner: FeatureTranscriber) -> None:
        self.inner = inner
        self.calls = 0

    def transcribe_features(self, mel: FloatArray, *, on_progress: object = None) -> Transcript:
        self.calls += 1
        return self.inner.transcribe_features(mel)


def test_unsupported_language_pair_fails_before_decoding(
    speech_wav: Path, transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    counting = _CountingTranscriber(transcriber)
    with pytest.raises(UnsupportedLanguagePairError):
        caption_recording(
            speech_wav,
            out_dir=tmp_path / "out",
            transcriber=counting,
            translator_factory=translator_for,
            to_languages=["pt", "xh"],
        )
    assert counting.calls == 0
    assert not (tmp_path / "out").exists()
    with pytest.raises(CaptionFileError):
        caption_recording(
            speech_wav,
            out_dir=tmp_path / "out",
            transcriber=counting,
            translator_factory=translator_for,
            to_languages=["../etc"],
        )
    with pytest.raises(CaptionFileError):
        caption_recording(
            speech_wav,
            out_dir=tmp_path / "out",
            transcriber=counting,
            translator_factory=translator_for,
            to_languages=["pt_BR"],
        )
    assert counting.calls == 0


def test_output_folder_that_is_a_file_is_refused(
    speech_wav: Path, transcriber: FeatureTranscriber, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(CaptionFileError, match="not a folder"):
        caption_recording(
            speech_wav,
            out_dir=not_a_folder,
            transcriber=transcriber,
            translator_factory=translator_for,
        )
